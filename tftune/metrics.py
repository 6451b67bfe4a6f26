"""Classification metrics: accuracy, macro-F1, per-class precision/recall, confusion matrix."""

import numpy as np

from tftune.errors import DataError


def classification_metrics(true, predicted, labels):
    """Metrics of predicted against true class indices.

    Args:
        true: int array of true class indices.
        predicted: int array of predicted class indices.
        labels: class names, indexed like the predictions.

    Returns:
        A JSON-ready dict with `accuracy`, `macro_f1`, `examples`, `per_class` (precision,
        recall, f1 and support per label), `confusion_matrix` (rows: true, columns:
        predicted) and `labels`, the class names in the matrix's order.

    Example:

    >>> classification_metrics([0, 1, 1], [0, 1, 0], ["neg", "pos"])["accuracy"]
    0.6666666666666666
    """
    true = np.asarray(true, dtype="int64")
    predicted = np.asarray(predicted, dtype="int64")
    n = len(labels)
    confusion = np.zeros((n, n), dtype="int64")
    np.add.at(confusion, (true, predicted), 1)
    per_class = {}
    f1_scores = []
    for i, label in enumerate(labels):
        hits = confusion[i, i]
        predicted_count = confusion[:, i].sum()
        support = confusion[i, :].sum()
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
        f1_scores.append(f1)
    return {
        "accuracy": float((true == predicted).mean()) if len(true) else 0.0,
        "macro_f1": float(np.mean(f1_scores)),
        "examples": int(len(true)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": list(labels),
    }


def check_known_labels(labels, known, source="data"):
    """Refuses labeled data with a label the model was not trained on (one line naming them)."""
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise DataError(
            f"{source}: label(s) {', '.join(map(repr, unknown[:5]))} unknown to the model "
            f"(it knows {', '.join(map(repr, known))})"
        )


def plot_metrics(metrics, labels, path, title):
    """Write a PNG of `classification_metrics` output: the confusion matrix and per-class scores.

    Needs matplotlib (`pip install 'tftune[plot]'`). The file is written to a temporary name
    beside `path` and renamed, so an interrupted write never leaves a partial PNG; it gets the
    permissions of any new file (0644 under the usual umask).

    Args:
        metrics: a dict returned by `classification_metrics`.
        labels: class names in the matrix's order.
        path: the PNG file to write.
        title: the figure's title, e.g. the model and data names.

    Example:

    >>> metrics = classification_metrics([0, 1, 1], [0, 1, 0], ["neg", "pos"])
    >>> plot_metrics(metrics, ["neg", "pos"], "confusion.png", "demo")  # doctest: +SKIP
    """
    import os
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confusion = np.asarray(metrics["confusion_matrix"], dtype="float64")
    # Row-normalised colours (recall per true class) stay readable when classes are imbalanced;
    # the cells still print raw counts.
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    side = max(4.0, 0.6 * n + 2.5)
    figure = Figure(figsize=(2 * side + 1, side), layout="constrained")
    FigureCanvasAgg(figure)
    matrix_axes, scores_axes = figure.subplots(1, 2, width_ratios=[1, 1])

    _draw_confusion(figure, matrix_axes, confusion, shares, labels)
    _draw_class_scores(scores_axes, metrics, labels)
    figure.suptitle(f"{title}: accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f}, "
                    f"{metrics['examples']:,} examples")

    path = Path(path)
    # Not mkstemp, whose files are private (0600): a plain new file follows the umask.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            figure.savefig(file, format="png", dpi=100)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _draw_confusion(figure, matrix_axes, confusion, shares, labels):
    """The confusion matrix: colours by share of the true class, cells with raw counts."""
    n = len(labels)
    image = matrix_axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(n):
        for column in range(n):
            matrix_axes.text(column, row, f"{int(confusion[row, column])}", ha="center", va="center",
                             color="white" if shares[row, column] > 0.5 else "black", fontsize=9)
    matrix_axes.set_xticks(range(n), labels, rotation=45, ha="right")
    matrix_axes.set_yticks(range(n), labels)
    matrix_axes.set_xlabel("predicted")
    matrix_axes.set_ylabel("true")
    matrix_axes.set_title("confusion matrix (colour: share of the true class)")
    figure.colorbar(image, ax=matrix_axes, shrink=0.8)


def _draw_class_scores(scores_axes, metrics, labels):
    """Precision, recall and F1 of every class as horizontal bars, with its support."""
    n = len(labels)
    positions = np.arange(n)
    width = 0.27
    for offset, score in zip((-width, 0.0, width), ("precision", "recall", "f1")):
        scores_axes.barh(positions + offset, [metrics["per_class"][label][score] for label in labels], width,
                         label=score)
    scores_axes.set_yticks(positions, [f"{label} ({metrics['per_class'][label]['support']})" for label in labels])
    scores_axes.invert_yaxis()
    scores_axes.set_xlim(0.0, 1.0)
    scores_axes.set_xlabel("score")
    scores_axes.set_title("per class (support)")
    scores_axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3)
