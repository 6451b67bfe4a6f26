"""The Python API: `pretrain`, `finetune`, `load`, `predict` and `interpret` on texts in memory or in files.

The functions behind `import tftune`, and the one layer the `tftune` command line calls. Every
training request is resolved the same way for both (`tftune.plans`: the recipe, with `resume`
the checkpoint's; `--from` names; the data; the checks made before TensorFlow is imported), then
run (`run_plan`):

- `pretrain(texts, out=...)` trains (or continues) a language model and returns it.
- `finetune(from_run, (texts, labels), out=...)` fine-tunes a classifier with gradual
  unfreezing, exports it, and returns it.
- `load(path)` rebuilds the model of a run or a shipped model (`from_config` + weights).
- `predict(path, texts)` classifies raw strings with a run's exported SavedModel.
- `interpret(run, test, out=...)` reports the highest-loss texts, the most confused classes,
  per-class scores and the training curves of a finetune run.

Data are arguments, never recipe settings: files, lists of texts (and labels), a pandas
DataFrame or a `tf.data.Dataset` (see `tftune.inputs`), used as they are; nothing is written but
the run. The run's `run.json` records each input's fingerprint, and `resume` refuses other data.

Progress goes through the `tftune` logger; `logging.basicConfig(level=logging.INFO)` shows it.
`callbacks=` and `verbose=` pass through to every Keras `fit`, and the result carries the Keras
`History` of the epochs trained in the call. TensorFlow is imported as quietly as on the command
line. Each call leaves the caller's random state (Python's, NumPy's and TensorFlow's global seed),
Keras' global dtype policy and the process' signal handlers as they were, and works off the main
thread too.

Example:

```python
import tftune

lm = tftune.pretrain(my_texts, from_run="lstm-glove-general", out="runs/lm")
clf = tftune.finetune("runs/lm", (train_texts, train_labels), valid=(valid_texts, valid_labels),
                      out="runs/clf")
clf.metrics["valid"]["accuracy"], clf.model.summary()
labels, probabilities = tftune.predict("runs/clf", ["a gripping, moving film"])
```
"""

import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

from tftune.bidirectional import plan_bidirectional, run_bidirectional
from tftune.inputs import labeled_input, text_list
from tftune.plans import plan_finetune, plan_pretrain, run_plan
from tftune.quiet_import import import_tensorflow_quietly
from tftune.runs import FinetuneRun


class Trained(NamedTuple):
    """What `pretrain` and `finetune` return.

    Attributes:
        model: the trained Keras model (`LanguageModel`, `TextClassifier` or `ClassifierEnsemble`),
            which takes raw strings.
        metrics: the run's metrics, as written to its `metrics.json`.
        run: the run directory.
        history: the `keras.callbacks.History` of the epochs trained in this call (every stage
            of a fine-tuning, one after the other).
    """

    model: Any
    metrics: dict
    run: Path
    history: Any = None


def pretrain(texts=None, *, out=None, valid=None, from_run=None, recipe=None, settings=(), force=False, resume=False,
             callbacks=(), verbose="auto", text_column="text", encoding="utf-8", bidirectional=False):
    """Trains a next-token language model on `texts` and returns it with its metrics.

    Args:
        texts: the unlabeled text: a list of documents, a pandas Series or DataFrame (its
            `text_column`), a `tf.data.Dataset` of strings, a file or a list of files
            (`pathlib.Path`s). Required, except with `resume`: then the interrupted run's files
            are read again (texts given in memory must be given again).
        out: the pretrain run directory to create; default `runs/RECIPE-pretrain`.
        valid: held-out text to measure perplexity on, in the same forms; None = the last
            `pretrain.valid_fraction` of `texts`.
        from_run: continue from this pretrain run or shipped model (ULMFiT's target-domain step),
            e.g. `"lstm-glove-general"`; its recipe is the default one.
        recipe: a shipped recipe's name, a recipe file or a `Recipe`; default: with `resume`, the
            checkpoint's; else `from_run`'s recipe, else the default recipe.
        settings: recipe overrides: a mapping `{"pretrain.epochs": 2}` or `"section.key=value"` strings.
        force: replace an existing non-empty `out`.
        resume: continue an interrupted run from its checkpoint.
        callbacks: extra Keras callbacks for `fit`.
        verbose: Keras' `verbose` for `fit` (0 silent, 1 progress bar, 2 a line per epoch);
            `"auto"`: a progress bar on a terminal, a line per epoch elsewhere.
        text_column, encoding: how to read files and DataFrames.
        bidirectional: continue `from_run` and its backward partner (or both runs of a
            bidirectional run) on `texts`, and write both as one bidirectional run, which
            `finetune` takes as an ensemble (see `tftune.bidirectional`).

    Returns:
        `Trained(model, metrics, run, history)`, the model a `LanguageModel`; with
        `bidirectional`, `model` and `metrics` are dicts by direction (`"forward"`, `"backward"`).

    Example:

    ```python
    lm = tftune.pretrain(["first document", "second one"], from_run="lstm-glove-general", out="runs/lm",
                         settings={"pretrain.epochs": 1})
    both = tftune.pretrain(my_texts, from_run="lstm-glove-general", out="runs/lm-both", bidirectional=True)
    ```
    """
    if bidirectional:
        return _pretrain_both(texts, out=out, valid=valid, from_run=from_run, recipe=recipe, settings=settings,
                              force=force, resume=resume, callbacks=callbacks, verbose=verbose,
                              text_column=text_column, encoding=encoding)
    plan = plan_pretrain(texts, out=out, valid=valid, from_run=from_run, recipe=recipe, settings=settings,
                         force=force, resume=resume, text_column=text_column, encoding=encoding)
    history = keras_history()
    with callers_state_kept(verbose):  # building a model draws seeds too
        from tftune.models import LanguageModel

        metrics = run_plan(plan, callbacks=[history, *callbacks])
        return Trained(LanguageModel.from_preset(plan.out), metrics, plan.out, history)


def _pretrain_both(texts, *, callbacks, verbose, **request):
    """`pretrain(..., bidirectional=True)`: both directions, one run."""
    plan = plan_bidirectional(texts, **request)
    history = keras_history()
    with callers_state_kept(verbose):
        from tftune.pretrained_models import bidirectional_members
        from tftune.models import LanguageModel

        metrics = run_bidirectional(plan, callbacks=[history, *callbacks])
        runs = bidirectional_members(plan.out)
        models = {direction: LanguageModel.from_preset(path) for direction, path in runs.items()}
        return Trained(models, metrics, plan.out, history)


def finetune(from_run, train=None, *, out=None, valid=None, test=None, recipe=None, settings=(), text_column="text",
             label_column="label", encoding="utf-8", force=False, resume=False, callbacks=(), verbose="auto"):
    """Fine-tunes a classifier on pretrained encoders, exports it, and returns it with its metrics.

    Args:
        from_run: a pretrain run or shipped model, or a list of them (an ensemble); a
            bidirectional run (`pretrain(..., bidirectional=True)`) stands for its two directions.
        train: the labeled examples: `(texts, labels)`, a pandas DataFrame (`text_column` and
            `label_column`), a `tf.data.Dataset` of `(text, label)` pairs, or a file. Required,
            except with `resume` (as for `pretrain`).
        out: the finetune run directory to create (the SavedModel goes to `out/export`); default
            `runs/RECIPE-finetune`.
        valid: validation examples, in the same forms; None = hold out part of `train`.
        test: test examples, in the same forms; None = none.
        recipe: a shipped recipe's name, a recipe file or a `Recipe`; default: with `resume`, the
            checkpoint's; else the (first) pretrain run's recipe.
        settings: recipe overrides: a mapping `{"finetune.epochs": 4}` or `"section.key=value"` strings.
        text_column, label_column, encoding: how to read files and DataFrames.
        force: replace an existing non-empty `out`.
        resume: continue an interrupted run from its checkpoint.
        callbacks: extra Keras callbacks for every `fit` (one per unfreezing stage).
        verbose: Keras' `verbose` for `fit`, as for `pretrain`.

    Returns:
        `Trained(model, metrics, run, history)`, the model a `TextClassifier` (a
        `ClassifierEnsemble` for several runs) that takes raw strings.

    Example:

    ```python
    clf = tftune.finetune("lstm-glove-general", (texts, labels), out="runs/clf")
    clf.metrics["valid"]["accuracy"]
    ```
    """
    plan = plan_finetune(from_run, train, out=out, valid=valid, test=test, recipe=recipe, settings=settings,
                         text_column=text_column, label_column=label_column, encoding=encoding, force=force,
                         resume=resume)
    history = keras_history()
    with callers_state_kept(verbose):  # building a model draws seeds too
        metrics = run_plan(plan, callbacks=[history, *callbacks])
        return Trained(load(plan.out), metrics, plan.out, history)


def load(path):
    """The Keras model of a run or a shipped model, with its preprocessor: it takes raw strings.

    Rebuilt with `from_config` and its weights loaded, in any process (tftune's Keras objects
    are registered on import). A classifier comes compiled for `fit` and `evaluate`; its `predict`
    returns class probabilities, in the order of the run's `labels.json`.

    Args:
        path: a finetune run (its classifier or ensemble), or a pretrain run or shipped model's
            name (its `LanguageModel`; the backbone is `model.backbone`).

    Example:

    ```python
    classifier = tftune.load("runs/clf")
    classifier.predict(["a gripping, moving film"])
    classifier.save("clf.keras")  # keras.saving.load_model reads it after `import tftune`
    ```
    """
    import_tensorflow_quietly()
    from tftune.models import LanguageModel

    if FinetuneRun.kind_at(path) == FinetuneRun.kind:
        return FinetuneRun.open(path).load_model()
    return LanguageModel.from_preset(path)


def predict(path, texts):
    """Classifies raw strings with the SavedModel of a finetune run (or an export directory).

    Args:
        path: a finetune run or its export.
        texts: a list of strings, or a pandas Series.

    Returns:
        `(labels, probabilities)`: the most probable class name per text, and a float32 array
        `[len(texts), classes]` in the order of the run's labels.
    """
    return predictor(path).predict(text_list(texts, "texts"))


def predictor(path):
    """The exported SavedModel of a finetune run (or an export directory), loaded once for many calls.

    A damaged export is one `RunError` naming the file, as on the command line.

    Args:
        path: a finetune run or its export.

    Returns:
        A `tftune.export.Predictor`: `predict(texts)` gives `(labels, probabilities)`, and `labels`
        holds the class names, the columns of the probabilities.
    """
    import_tensorflow_quietly()
    from tftune.export import Predictor

    with _reading_export(path):
        return Predictor(path)


def evaluate(model, data, *, text_column="text", label_column="label", encoding="utf-8", plot=None, force=False):
    """Metrics of an exported model (or a finetune run's export) on a labeled file, the twin of `tftune evaluate`.

    Args:
        model: a finetune run or its export.
        data: the labeled file (.csv/.tsv/.jsonl).
        text_column, label_column, encoding: how to read it.
        plot: also draw the confusion matrix and per-class scores into this PNG (needs matplotlib).
        force: replace an existing `plot` file.

    Returns:
        The metrics: accuracy, macro-F1, per-class scores, the confusion matrix, the examples.

    Example:

    ```python
    tftune.api.evaluate("runs/clf", "task/test.csv")["accuracy"]
    ```
    """
    from tftune.data import read_labeled
    from tftune.errors import WriteError
    from tftune.output_paths import check_output_paths

    if plot is not None:
        check_output_paths([("--plot", plot)], [("evaluated model", model), ("--data file", data)])
        _check_plot_path(Path(plot), force)
    texts, labels = read_labeled(data, text_column, label_column, encoding=encoding)
    import_tensorflow_quietly()
    from tftune.export import evaluate_export

    with _reading_export(model):
        metrics = evaluate_export(model, texts, labels, source=data)
    if plot is not None:
        from tftune.metrics import plot_metrics

        try:
            plot_metrics(metrics, list(metrics["per_class"]), plot, f"{Path(model).name} on {Path(data).name}")
        except OSError as e:
            raise WriteError(f"{plot}: writing the plot failed ({e.strerror or e}); nothing was written") from e
        logging.getLogger(__name__).info(f"plot written to {plot}")
    return metrics


def convert(run_dir, out, *, force=False):
    """Converts a run of run format 1 to format 2 (its model as preset files), keeping its weights.

    The run itself is never changed: the converted run is a new directory.

    Args:
        run_dir: a pretrain or finetune run written in run format 1.
        out: the converted run's directory; not `run_dir`, nor inside it, nor holding it.
        force: replace an earlier run at `out`.

    Returns:
        The converted run's directory, as a `Path`.

    Example:

    >>> from tftune.api import convert
    >>> convert("runs/old-lm", "runs/old-lm-v2")  # doctest: +SKIP
    PosixPath('runs/old-lm-v2')
    """
    from tftune.output_paths import check_convert_paths

    check_convert_paths(run_dir, out)  # before the slow TensorFlow import
    import_tensorflow_quietly()
    from tftune.convert import convert_run

    return convert_run(run_dir, out, force=force)


def export(run, out=None, *, force=False):
    """Exports a finetune run's classifier again, as a SavedModel that serves raw strings.

    Args:
        run: the finetune run.
        out: the export directory; default `RUN/export`.
        force: replace an earlier export at `out`.

    Returns:
        The export directory.
    """
    from tftune.errors import WriteError
    from tftune.output_paths import check_export_paths
    from tftune.staging import write_failure

    out = Path(out if out is not None else FinetuneRun(run).export)
    check_export_paths(run, out)
    import_tensorflow_quietly()
    from tftune.finetuning import reexport

    try:
        reexport(run, out, force=force)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise WriteError(f"{out}: writing the export failed ({reason}); nothing was written") from e
    return out


def interpret(run, test, out=None, *, top=10, plot=None, force=False, text_column="text", label_column="label",
              encoding="utf-8"):
    """What a finetune run's classifier gets wrong on labeled data, and how it trained.

    The twin of `tftune interpret`: the highest-loss texts, the most confused pairs of classes,
    per-class precision, recall and F1, and (in `out`) the training curves of every stage.

    Args:
        run: a finetune run directory.
        test: the labeled examples: `(texts, labels)`, a pandas DataFrame (`text_column` and
            `label_column`), or a file (.csv/.tsv/.jsonl).
        out: the folder to write `report.json`, `top_losses.csv` and `curves.png` to; None =
            only return the report.
        top: how many of the highest-loss texts to report.
        plot: draw `curves.png`: True, False, or None = when matplotlib is installed.
        force: replace an earlier report at `out`.
        text_column, label_column, encoding: how to read a file or DataFrame.

    Returns:
        The report, a dict: `labels`, `accuracy`, `macro_f1`, `per_class`, `confusion_matrix`,
        `most_confused`, `top_losses`, `stages`, and `files`, the paths written.

    Example:

    ```python
    report = tftune.interpret("runs/clf", "task/test.csv", out="runs/clf-interpret")
    report["most_confused"][:3], report["top_losses"][0]
    ```
    """
    from tftune.data import read_labeled
    from tftune.errors import DataError
    from tftune.interpretation import PLOT_MISSING, check_report_paths, interpret_run, matplotlib_available
    from tftune.metrics import check_known_labels

    # What can be told before reading the data and importing TensorFlow.
    data_file = test if isinstance(test, (str, os.PathLike)) else None
    run_labels = FinetuneRun.open(run).labels()
    if out is not None:
        check_report_paths(run, out, force, data_file)
    if plot and not matplotlib_available():
        raise DataError(f"--plot {PLOT_MISSING}")
    if data_file is not None:
        texts, labels = read_labeled(test, text_column, label_column, encoding=encoding)
    else:
        example = labeled_input("test", test, text_column, label_column)
        texts, labels = list(example.texts), list(example.labels)
    check_known_labels(labels, run_labels, data_file or "test")
    import_tensorflow_quietly()
    return interpret_run(run, texts, labels, out, top=top, plot=plot, force=force, data_file=data_file)


# === Exports ===


@contextlib.contextmanager
def _reading_export(model):
    """Names the export in one line when its SavedModel cannot be read (a file truncated or damaged).

    TensorFlow logs a traceback when it cannot read `fingerprint.pb`, and then loads the model
    anyway; that file only identifies the model, so its log stays quiet.
    """
    from tftune.export import find_export
    from tftune.runs import reading_artifact

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        with reading_artifact(find_export(model)):
            yield
    finally:
        absl.setLevel(level)


def _check_plot_path(plot, force):
    """Refuses a --plot that cannot be written, before any work is done."""
    from tftune.errors import DataError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DataError("--plot needs matplotlib, which is not installed: pip install 'tftune[plot]'") from None
    if plot.suffix.lower() != ".png":
        raise DataError(f"{plot}: --plot writes a PNG; give a file name ending in .png")
    if not plot.parent.is_dir():
        raise DataError(f"{plot}: directory {plot.parent} does not exist")
    if plot.is_dir():
        raise DataError(f"{plot}: is a directory")
    if plot.exists() and not force:
        raise DataError(f"{plot}: exists; choose another --plot or pass --force to replace it")


# === The caller's process ===


def keras_history():
    """A Keras `History` callback, which keeps adding up epochs over several `fit` calls (stages)."""
    import keras

    return keras.callbacks.History()


@contextlib.contextmanager
def callers_state_kept(verbose):
    """Trains with Keras' `verbose`, TensorFlow imported quietly, and the caller's random state put back.

    Training seeds Python's, NumPy's and TensorFlow's generators (`keras.utils.set_random_seed`);
    a notebook that called `tftune.finetune` gets its own sequences back afterwards.
    """
    import_tensorflow_quietly()
    import numpy as np
    import tensorflow as tf

    from tftune.run_setup import FIT_VERBOSITY

    python_state, numpy_state = random.getstate(), np.random.get_state()
    global_seed = tf.compat.v1.get_seed(None)[0]
    token = FIT_VERBOSITY.set(verbose)
    try:
        yield
    finally:
        FIT_VERBOSITY.reset(token)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        tf.random.set_seed(global_seed)
