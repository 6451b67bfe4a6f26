"""What a trained classifier gets wrong, and how it trained: fastai's `ClassificationInterpretation`.

`interpret_run` runs a finetune run's classifier on labeled texts and reports:

- `top_losses`: the texts with the highest cross-entropy, with their true and predicted label
  and the predicted label's probability;
- `most_confused`: the pairs of classes confused most often (true -> predicted, count);
- the metrics of `tftune.metrics.classification_metrics` (per-class precision, recall, F1 and
  the confusion matrix), with the label list they are indexed by;
- the run's training curves, loss and accuracy per epoch with the unfreezing stages marked, as a
  PNG (with matplotlib, the `plot` extra).

Example:

```python
report = interpret_run("runs/clf", "task/test.csv", out="runs/clf-interpret")
report["top_losses"][0]  # {"text": ..., "label": ..., "predicted": ..., "probability": ..., "loss": ...}
```
"""

import csv
import json
import logging
from pathlib import Path

import numpy as np

from tftune.errors import DataError
from tftune.metrics import check_known_labels, classification_metrics

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
TOP_LOSSES_FILE = "top_losses.csv"
CURVES_FILE = "curves.png"
PLOT_MISSING = "needs matplotlib, which is not installed: pip install 'tftune[plot]'"


# === The report ===


def interpretation(texts, true, probabilities, labels, top=10):
    """The report of predicted `probabilities` against the `true` class indices of `texts`.

    Args:
        texts: the texts, in the rows' order.
        true: int array of the true class indices.
        probabilities: float array `[len(texts), len(labels)]`, each row summing to 1.
        labels: class names, indexed like the columns.
        top: how many of the highest-loss texts to keep.

    Returns:
        A JSON-ready dict: `labels`, `classification_metrics`' keys, `most_confused` and `top_losses`.

    Example:

    >>> report = interpretation(["good", "bad"], [0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]), ["pos", "neg"])
    >>> report["most_confused"], report["top_losses"][0]["text"]
    ([{'true': 'neg', 'predicted': 'pos', 'count': 1}], 'bad')
    """
    true = np.asarray(true, dtype="int64")
    probabilities = np.asarray(probabilities, dtype="float64")
    predicted = probabilities.argmax(axis=-1)
    metrics = classification_metrics(true, predicted, labels)
    return {
        "labels": list(labels),
        **metrics,
        "most_confused": most_confused(metrics["confusion_matrix"], labels),
        "top_losses": top_losses(texts, true, probabilities, labels, top),
    }


def top_losses(texts, true, probabilities, labels, top=10):
    """The `top` texts with the highest cross-entropy `-log p(true label)`, highest first."""
    losses = -np.log(np.maximum(probabilities[np.arange(len(true)), true], 1e-12))
    predicted = probabilities.argmax(axis=-1)
    order = np.argsort(-losses, kind="stable")[:top]
    return [
        {"text": texts[i], "label": labels[true[i]], "predicted": labels[predicted[i]],
         "probability": float(probabilities[i, predicted[i]]), "loss": float(losses[i])}
        for i in order
    ]


def most_confused(confusion, labels, min_count=1):
    """Off-diagonal cells of a confusion matrix with at least `min_count` texts, most first
    (ties in label order), like fastai's `most_confused`."""
    confusion = np.asarray(confusion)
    pairs = [
        {"true": labels[row], "predicted": labels[column], "count": int(confusion[row, column])}
        for row in range(len(labels)) for column in range(len(labels))
        if row != column and confusion[row, column] >= min_count
    ]
    return sorted(pairs, key=lambda pair: -pair["count"])


# === Training curves ===


def curve_series(history):
    """A run's `history.json` records grouped by ensemble member (`None` for one classifier).

    Returns:
        `{member: [record, ...]}`, each member's epochs in order.
    """
    series = {}
    for record in history:
        series.setdefault(record.get("member"), []).append(record)
    return series


def plot_curves(history, path, title):
    """Writes a PNG of loss and accuracy per epoch (train and validation), stage boundaries marked.

    Args:
        history: the records of a run's `history.json` (`epoch`, `stage`, `loss`, `val_loss`,
            `accuracy`, `val_accuracy`; `member` in an ensemble).
        path: the PNG file to write.
        title: the figure's title.

    Example:

    >>> plot_curves(json.loads(Path("runs/clf/history.json").read_text()), "curves.png", "clf")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    series = curve_series(history)
    for member, records in series.items():
        epochs = [record["epoch"] for record in records]
        prefix = f"{member} " if member is not None else ""
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            for key, style in ((metric, "-o"), (f"val_{metric}", "--o")):
                if all(key in record for record in records):
                    axes.plot(epochs, [record[key] for record in records], style, markersize=4,
                              label=f"{prefix}{'validation' if key.startswith('val_') else 'train'}")
    first = next(iter(series.values()), [])
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        _mark_stages(axes, first)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.legend(loc="best", fontsize=8)
    figure.suptitle(title)
    figure.savefig(path, format="png", dpi=100)


def _mark_stages(axes, records):
    """Dotted lines between the unfreezing stages, each stage named at the top, over its epochs."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.margins(x=0.08, y=0.15)  # room for the stage names above the curves
    stages = stage_summary(records)
    for number, stage in enumerate(stages):
        if stage["stage"] is None:
            continue
        if number:
            axes.axvline(stage["epochs"][0] - 0.5, color="grey", linestyle=":", linewidth=1)
        middle = (stage["epochs"][0] + stage["epochs"][-1]) / 2
        axes.annotate(f"stage {stage['stage']}", (middle, 1.0), xycoords=("data", "axes fraction"),
                      xytext=(0, -12), textcoords="offset points", ha="center", fontsize=8, color="grey")


def matplotlib_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# === A run on labeled data ===


def check_report_paths(run, out, force, data=None):
    """Refuses an `out` that overlaps the run or the data, or that exists without `force`
    (before the slow TensorFlow import)."""
    from tftune.output_paths import check_output_paths
    from tftune.runs import check_writable_target

    inputs = [("finetune run", run)] + ([("data file", data)] if data is not None else [])
    check_output_paths([("--out", out)], inputs)
    check_writable_target(out, force, replaces="report")


def interpret_run(run, texts, labels, out=None, top=10, plot=None, force=False, data_file=None):
    """Interprets the classifier of a finetune run on labeled texts; writes the report to `out`.

    Args:
        run: a finetune run directory.
        texts, labels: the labeled texts (lists of strings); every label must be known to the run.
        out: the folder to write `report.json`, `top_losses.csv` and `curves.png` to (atomically);
            None = write nothing.
        top: how many of the highest-loss texts to report.
        plot: write `curves.png`: True = yes (an error without matplotlib), False = no, None = when
            matplotlib is installed.
        force: replace an earlier report at `out`.
        data_file: the file the texts were read from, if any: named in messages and in the
            report, and never overlapped by `out`.

    Returns:
        The report as a dict (what `report.json` holds), with `files`: the paths written.
    """
    from tftune.runs import FinetuneRun

    finetune_run = FinetuneRun.open(run)
    source = "data" if data_file is None else str(data_file)
    if out is not None:
        check_report_paths(run, out, force, data_file)
    if plot and not matplotlib_available():
        raise DataError(f"plot=True {PLOT_MISSING}")
    run_labels = finetune_run.labels()
    check_known_labels(labels, run_labels, source)
    if not texts:
        raise DataError(f"{source}: no examples")
    model = finetune_run.load_model()
    probabilities = model.predict(list(texts), verbose=0)
    index = {label: i for i, label in enumerate(run_labels)}
    report = {"run": str(run), "data": data_file and str(data_file),
              **interpretation(list(texts), [index[label] for label in labels], probabilities, run_labels, top)}
    # A run may have no history.json (an older format): the report then has no curves.
    history_file = finetune_run.history_file
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
    report["stages"] = stage_summary(history)
    report["files"] = []
    if out is not None:
        write_report(report, history, out, force, plot, finetune_run.path.name)
    return report


def stage_summary(history):
    """The epochs and trainable layers of each unfreezing stage (of the first ensemble member)."""
    stages = []
    for record in next(iter(curve_series(history).values()), []):
        if not stages or stages[-1]["stage"] != record.get("stage"):
            stages.append({"stage": record.get("stage"), "trainable_layers": record.get("trainable_layers"),
                           "epochs": []})
        stages[-1]["epochs"].append(record["epoch"])
    return stages


def write_report(report, history, out, force, plot, title):
    """Writes the report folder whole (staged, then renamed); lists its files in `report["files"]`."""
    from tftune.runs import RunDirectory

    draw = bool(history) and (plot if plot is not None else matplotlib_available())
    if not history and plot is not False:
        logger.info("training curves not drawn: the run has no history of its epochs")
    elif not draw and plot is None:
        logger.info(f"training curves not drawn: {CURVES_FILE} {PLOT_MISSING}")
    names = [REPORT_FILE, TOP_LOSSES_FILE] + ([CURVES_FILE] if draw else [])
    out = Path(out)
    report["files"] = [str(out / name) for name in names]
    with RunDirectory(out, force, replaces="report") as staged:
        folder = staged.path
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(folder / TOP_LOSSES_FILE, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, ["text", "label", "predicted", "probability", "loss"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(report["top_losses"])
        if draw:
            plot_curves(history, folder / CURVES_FILE, f"{title}: training curves")
