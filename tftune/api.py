"""The Python API: `pretrain`, `finetune`, `load`, `predict` and `interpret` on texts in memory or in files.

The functions behind `import tftune`. They run what the command line runs (same recipes, same
run directories, same checks, same errors) and hand back Keras models:

- `pretrain(texts, out=...)` trains (or continues) a language model and returns it.
- `finetune(from_run, (texts, labels), out=...)` fine-tunes a classifier with gradual
  unfreezing, exports it, and returns it.
- `load(path)` rebuilds the model of a run or a shipped model (`from_config` + weights).
- `predict(path, texts)` classifies raw strings with a run's exported SavedModel.
- `interpret(run, test, out=...)` reports the highest-loss texts, the most confused classes,
  per-class scores and the training curves of a finetune run.

Texts may be lists of strings, pandas Series or DataFrames (when pandas is installed), or
files. Texts given in memory are written once to CSV files in the hidden folder beside `out`
(`.NAME.data/`, named by their content), because a run records the files it read: its
`recipe.toml` and `--resume` find them there.

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
import csv
import hashlib
import io
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tftune.errors import DataError, RunError
from tftune.pretrained_models import resolve_run
from tftune.quiet_import import import_tensorflow_quietly
from tftune.recipe import DEFAULT_RECIPE, LOCAL_DISTRIBUTE, Recipe, load_recipe
from tftune.runs import FinetuneRun, PretrainRun, data_folder



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


def pretrain(texts=None, *, out, from_run=None, recipe=None, settings=(), force=False, resume=False, callbacks=(),
             verbose="auto"):
    """Trains a next-token language model on `texts` and returns it with its metrics.

    Args:
        texts: the unlabeled text: a list of documents, a pandas Series or DataFrame (its `text`
            column), a file or a list of files; None = the recipe's `pretrain.corpus`.
        out: the pretrain run directory to create.
        from_run: continue from this pretrain run or shipped model (ULMFiT's target-domain step),
            e.g. `"lstm-glove-general"`; its recipe is the default one.
        recipe: a shipped recipe's name, a recipe file or a `Recipe`; default: `from_run`'s
            recipe, else the default recipe.
        settings: recipe overrides: a mapping `{"pretrain.epochs": 2}` or `"section.key=value"` strings.
        force: replace an existing non-empty `out`.
        resume: continue an interrupted run from its checkpoint.
        callbacks: extra Keras callbacks for `fit`.
        verbose: Keras' `verbose` for `fit` (0 silent, 1 progress bar, 2 a line per epoch);
            `"auto"`: a progress bar on a terminal, a line per epoch elsewhere.

    Returns:
        `Trained(model, metrics, run, history)`, the model a `LanguageModel`.

    Example:

    ```python
    lm = tftune.pretrain(["first document", "second one"], from_run="lstm-glove-general", out="runs/lm",
                         settings={"pretrain.epochs": 1})
    ```
    """
    import_tensorflow_quietly()
    from tftune.models import LanguageModel
    from tftune.pretraining import pretrain as train_language_model

    from_run = None if from_run is None else resolve_run(from_run)
    default = PretrainRun.open(from_run).recipe_file if from_run is not None else DEFAULT_RECIPE
    overrides = []
    if texts is not None:
        overrides.append(("pretrain.corpus", _corpus_files(texts, out)))
    resolved = _recipe(recipe, default, overrides, settings, from_run_recipe=from_run is not None)
    history = keras_history()
    with callers_state_kept(verbose):  # building a model draws seeds too
        metrics = train_language_model(resolved, out, force=force, from_run=from_run, resume=resume,
                                       callbacks=[history, *callbacks])
        return Trained(LanguageModel.from_preset(out), metrics, Path(out), history)


def finetune(from_run, train=None, *, out, valid=None, test=None, recipe=None, settings=(), text_column="text",
             label_column="label", force=False, resume=False, callbacks=(), verbose="auto"):
    """Fine-tunes a classifier on pretrained encoders, exports it, and returns it with its metrics.

    Args:
        from_run: a pretrain run or shipped model, or a list of them (an ensemble).
        train: the labeled examples: `(texts, labels)`, a pandas DataFrame (`text_column` and
            `label_column`), or a file; None = the recipe's `finetune.train`.
        out: the finetune run directory to create (the SavedModel goes to `out/export`).
        valid: validation examples, in the same forms; None = hold out part of `train`.
        test: test examples, in the same forms; None = none (with `train` given).
        recipe: a shipped recipe's name, a recipe file or a `Recipe`; default: the (first)
            pretrain run's recipe.
        settings: recipe overrides: a mapping `{"finetune.epochs": 4}` or `"section.key=value"` strings.
        text_column, label_column: the columns of DataFrames and files.
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
    import_tensorflow_quietly()
    from tftune.finetuning import finetune as train_classifier

    from_runs = [resolve_run(run) for run in ([from_run] if isinstance(from_run, (str, os.PathLike)) else from_run)]
    overrides = [("finetune.text_column", text_column), ("finetune.label_column", label_column)]
    if train is not None:
        for split, examples in (("train", train), ("valid", valid), ("test", test)):
            path = "" if examples is None else _labeled_file(examples, split, out, text_column, label_column)
            overrides.append((f"finetune.{split}", path))
    resolved = _recipe(recipe, PretrainRun.open(from_runs[0]).recipe_file, overrides, settings, from_run_recipe=True)
    history = keras_history()
    with callers_state_kept(verbose):  # building a model draws seeds too
        metrics = train_classifier(resolved, from_runs, out, force=force, resume=resume, callbacks=[history, *callbacks])
        return Trained(load(out), metrics, Path(out), history)


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
    import_tensorflow_quietly()
    from tftune.export import Predictor

    return Predictor(path).predict(_texts(texts, "texts"))


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
    from tftune.interpretation import interpret_run

    data_file = None
    if _is_file_like(test):
        data_file = test
        texts, labels = read_labeled(test, text_column, label_column, encoding=encoding)
    else:
        texts, labels = _labeled_examples(test, "test", text_column, label_column)
    import_tensorflow_quietly()
    return interpret_run(run, texts, labels, out, top=top, plot=plot, force=force, data_file=data_file)


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

    from tftune.training import FIT_VERBOSITY

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


# === Inputs ===


def _recipe(recipe, default, overrides, settings, from_run_recipe):
    """The recipe to train with: `recipe` (or `default`), then the data `overrides`, then `settings`."""
    if isinstance(settings, Mapping):
        settings = list(settings.items())
    elif isinstance(settings, str):
        settings = [settings]
    if isinstance(recipe, Recipe):
        return recipe.with_overrides([*overrides, *settings])
    reset = LOCAL_DISTRIBUTE if recipe is None and from_run_recipe else []
    return load_recipe(recipe or default, [*reset, *overrides, *settings])


def _texts(texts, what):
    """A list of strings from a list or a pandas Series; a clear error for anything else."""
    if hasattr(texts, "tolist"):
        texts = texts.tolist()
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DataError(f"{what}: expected a list of strings, got {type(texts).__name__}")
    bad = next((text for text in texts if not isinstance(text, str)), None)
    if bad is not None:
        raise DataError(f"{what}: expected strings only, got {type(bad).__name__} {bad!r:.60}")
    return list(texts)


def _is_file_like(value):
    return isinstance(value, (str, os.PathLike))


def _corpus_files(texts, out):
    """The corpus file(s) of `pretrain`'s `texts`: given files as they are, documents written to a CSV."""
    if _is_file_like(texts):
        return [str(texts)]
    if isinstance(texts, Sequence) and texts and all(isinstance(item, os.PathLike) for item in texts):
        return [str(item) for item in texts]
    if hasattr(texts, "columns"):  # a DataFrame
        texts = texts["text"]
    return [str(_write_csv({"text": _texts(texts, "texts")}, "corpus", out))]


def _labeled_file(examples, split, out, text_column, label_column):
    """The file of one labeled split: a given file as it is, examples in memory written to a CSV."""
    if _is_file_like(examples):
        return str(examples)
    texts, labels = _labeled_examples(examples, split, text_column, label_column)
    return str(_write_csv({text_column: texts, label_column: labels}, split, out))


def _labeled_examples(examples, split, text_column, label_column):
    """`(texts, labels)` as lists of strings from a pair of sequences or a DataFrame."""
    if hasattr(examples, "columns"):  # a DataFrame
        examples = (examples[text_column], examples[label_column])
    if not (isinstance(examples, (tuple, list)) and len(examples) == 2):
        raise DataError(f"{split}: expected (texts, labels), a DataFrame or a file, got {type(examples).__name__}")
    texts = _texts(examples[0], f"{split} texts")
    labels = [str(label) for label in _texts_or_values(examples[1])]
    if len(texts) != len(labels):
        raise DataError(f"{split}: {len(texts)} texts but {len(labels)} labels")
    return texts, labels


def _texts_or_values(values):
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _write_csv(columns, stem, out):
    """Writes the columns to `data_folder(out)/STEM-HASH.csv` unless that file exists; returns its path.

    Named by content, so no call ever changes a file an earlier run read.
    """
    if not next(iter(columns.values())):
        raise DataError(f"{stem}: no examples")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values()))
    data = buffer.getvalue().encode("utf-8")
    folder = data_folder(out)
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}.csv"
    if not path.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_bytes(data)
            staging.replace(path)
        except OSError as e:
            raise RunError(f"{folder}: cannot write the examples there ({e.strerror})") from None
    return path
