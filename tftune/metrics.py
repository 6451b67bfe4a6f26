"""Classification metrics: accuracy, macro-F1, per-class precision/recall, confusion matrix."""

import numpy as np


def classification_metrics(true, predicted, labels):
    """Metrics of predicted against true class indices.

    Args:
        true: int array of true class indices.
        predicted: int array of predicted class indices.
        labels: class names, indexed like the predictions.

    Returns:
        A JSON-ready dict with `accuracy`, `macro_f1`, `examples`, `per_class` (precision,
        recall, f1 and support per label) and `confusion_matrix` (rows: true, columns:
        predicted, in `labels` order).

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
    }
