"""The Python API: `pretrain`, `finetune`, `load`, `predict` and `interpret` on texts in memory or in files.

The functions behind `import tftune`, and the one layer the `tftune` command line calls. Every
training request is resolved here, the same way for both: the recipe (`recipe=`, else the
`--from` run's, else the default; with `resume`, the checkpoint's), `--from` names, the data
and the checks made before TensorFlow is imported (`plan_pretrain`, `plan_finetune`), then run
(`run_plan`):

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
import dataclasses
import logging
import os
import random
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tftune.errors import DataError, RunError
from tftune.inputs import corpus_data, labeled_data, labeled_input, text_list
from tftune.presets import resolve_run
from tftune.quiet_import import import_tensorflow_quietly
from tftune.recipe import DEFAULT_RECIPE, LOCAL_DISTRIBUTE, Recipe, load_recipe
from tftune.runs import FinetuneRun, PretrainRun

logger = logging.getLogger(__name__)


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
             callbacks=(), verbose="auto", text_column="text", encoding="utf-8"):
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

    Returns:
        `Trained(model, metrics, run, history)`, the model a `LanguageModel`.

    Example:

    ```python
    lm = tftune.pretrain(["first document", "second one"], from_run="lstm-glove-general", out="runs/lm",
                         settings={"pretrain.epochs": 1})
    ```
    """
    plan = plan_pretrain(texts, out=out, valid=valid, from_run=from_run, recipe=recipe, settings=settings,
                         force=force, resume=resume, text_column=text_column, encoding=encoding)
    history = keras_history()
    with callers_state_kept(verbose):  # building a model draws seeds too
        from tftune.models import LanguageModel

        metrics = run_plan(plan, callbacks=[history, *callbacks])
        return Trained(LanguageModel.from_preset(plan.out), metrics, plan.out, history)


def finetune(from_run, train=None, *, out=None, valid=None, test=None, recipe=None, settings=(), text_column="text",
             label_column="label", encoding="utf-8", force=False, resume=False, callbacks=(), verbose="auto"):
    """Fine-tunes a classifier on pretrained encoders, exports it, and returns it with its metrics.

    Args:
        from_run: a pretrain run or shipped model, or a list of them (an ensemble).
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
            name (its `LanguageModel`; the encoder is `model.encoder`).

    Example:

    ```python
    classifier = tftune.load("runs/clf")
    classifier.predict(["a gripping, moving film"])
    classifier.save("clf.keras")  # keras.saving.load_model reads it after `import tftune`
    ```
    """
    import_tensorflow_quietly()
    from tftune.models import LanguageModel
    from tftune.models.presets import load_classifier

    if FinetuneRun.kind_at(path) == FinetuneRun.kind:
        return load_classifier(path)
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

    return Predictor(path).predict(text_list(texts, "texts"))


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

    data_file = test if isinstance(test, (str, os.PathLike)) else None
    if data_file is not None:
        texts, labels = read_labeled(test, text_column, label_column, encoding=encoding)
    else:
        example = labeled_input("test", test, text_column, label_column)
        texts, labels = list(example.texts), list(example.labels)
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


# === Training requests, resolved once for the command line and the API ===


@dataclasses.dataclass(frozen=True)
class Plan:
    """A training request, resolved and checked: what `run_plan` trains.

    Attributes:
        kind: "pretrain" or "finetune".
        recipe: the recipe to train with (see `resolve_recipe`).
        out: the run directory to write.
        data: the data, `tftune.inputs.CorpusData` or `tftune.inputs.LabeledData`.
        from_runs: the pretrain runs it starts from, resolved.
        force: replace an existing run at `out`.
        resume: continue the interrupted run of `out`.
    """

    kind: str
    recipe: Recipe
    out: Path
    data: Any
    from_runs: tuple = ()
    force: bool = False
    resume: bool = False


def plan_pretrain(texts=None, *, out=None, valid=None, from_run=None, recipe=None, settings=(), force=False,
                  resume=False, text_column="text", encoding="utf-8", max_memory=None):
    """Resolves a pretrain request and checks it, before any TensorFlow work (except to resume).

    Args:
        texts, out, valid, from_run, recipe, settings, force, resume, text_column, encoding: as for `pretrain`.
        max_memory: refuse a recipe whose estimated peak training memory is above this size
            (e.g. "8G"); None = the machine's memory.

    Returns:
        The `Plan`.
    """
    from_runs = [] if from_run is None else [resolve_run(from_run)]
    base = PretrainRun.open(from_runs[0], require=() if recipe else ("recipe_file",)) if from_runs else None
    resolved = resolve_recipe(recipe, settings, base, out, resume)
    out = Path(out if out is not None else f"runs/{resolved.name}-pretrain")
    if texts is None and resume:
        data = corpus_data(*_recorded_files(out, ("corpus", "valid")), **_recorded_reading(out))
    else:
        data = corpus_data(texts, valid, text_column=text_column, encoding=encoding)
    plan = Plan("pretrain", resolved, out, data, tuple(from_runs), force, resume)
    _check_before_training(plan, max_memory, base)
    return plan


def plan_finetune(from_run, train=None, *, out=None, valid=None, test=None, recipe=None, settings=(),
                  text_column="text", label_column="label", encoding="utf-8", force=False, resume=False,
                  max_memory=None):
    """Resolves a finetune request and checks it, as `plan_pretrain` does.

    Args:
        from_run, train, out, valid, test, recipe, settings, text_column, label_column, encoding, force, resume:
            as for `finetune`.
        max_memory: as for `plan_pretrain`.

    Returns:
        The `Plan`.
    """
    given = [from_run] if isinstance(from_run, (str, os.PathLike)) else list(from_run)
    # A wrong --from fails here, before the slow TensorFlow import; training checks the rest of the run.
    members = [PretrainRun.open(resolve_run(run), require=() if recipe else ("recipe_file",)) for run in given]
    resolved = resolve_recipe(recipe, settings, members[0], out, resume)
    out = Path(out if out is not None else f"runs/{resolved.name}-finetune")
    if train is None and resume:
        data = labeled_data(*_recorded_files(out, ("train", "valid", "test")), **_recorded_reading(out))
    else:
        data = labeled_data(train, valid, test, text_column=text_column, label_column=label_column,
                            encoding=encoding)
    plan = Plan("finetune", resolved, out, data, tuple(member.path for member in members), force, resume)
    _check_before_training(plan, max_memory, members[0])
    return plan


def resolve_recipe(recipe, settings=(), base_run=None, out=None, resume=False):
    """The recipe of a training request: the one rule the command line and the API share.

    `recipe` when given (a shipped name, a file or a `Recipe`); else, with `resume`, the recipe
    saved with the checkpoint of `out` (an interrupted run goes on as it started); else the
    `--from` run's own recipe (`base_run`), its `[distribute]` section reset to this machine's
    defaults; else the default recipe. `settings` go on top: a mapping, `"section.key=value"`
    strings or `(key, value)` pairs.
    """
    if isinstance(settings, Mapping):
        settings = list(settings.items())
    elif isinstance(settings, str):
        settings = [settings]
    settings = list(settings)
    if isinstance(recipe, Recipe):
        return recipe.with_overrides(settings)
    if recipe is not None:
        return load_recipe(recipe, settings)
    if resume:
        return Recipe.from_toml_file(_checkpoint(out).recipe_file, settings)
    if base_run is not None:
        return Recipe.from_toml_file(base_run.recipe_file, [*LOCAL_DISTRIBUTE, *settings])
    return load_recipe(DEFAULT_RECIPE, settings)


def run_plan(plan, callbacks=(), strategy=None):
    """Trains what `plan` says and writes its run; returns the run's metrics.

    Args:
        plan: the `Plan`.
        callbacks: extra Keras callbacks for every `fit`.
        strategy: the `tf.distribute` strategy; default: the recipe's (`start_strategy`).
    """
    strategy = start_strategy(plan.recipe) if strategy is None else strategy
    if plan.kind == "pretrain":
        from tftune.pretraining import pretrain as train_language_model

        return train_language_model(plan.recipe, plan.out, plan.data, force=plan.force, callbacks=callbacks,
                                    from_run=plan.from_runs[0] if plan.from_runs else None, resume=plan.resume,
                                    strategy=strategy)
    from tftune.finetuning import finetune as train_classifier

    return train_classifier(plan.recipe, list(plan.from_runs), plan.out, plan.data, force=plan.force,
                            callbacks=callbacks, resume=plan.resume, strategy=strategy)


def start_strategy(recipe):
    """Imports TensorFlow and creates the recipe's strategy before any other TensorFlow work
    (a multi-worker strategy must come first in the process)."""
    from tftune import distribute

    config = distribute.read_tf_config() if recipe.distribute.strategy == "multi-worker" else None
    if config is not None:
        logger.info(f"multi-worker: worker {config.worker_index} of {config.num_workers} "
                    f"({config.task_type} {config.task_index}) waits for every worker to join the cluster")
    import_tensorflow_quietly()
    if config is None:
        return distribute.recipe_strategy(recipe)
    # Joining blocks inside TensorFlow, where Python never sees Ctrl-C or SIGTERM: let them end
    # the process outright until every worker is there (nothing is written before).
    previous = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return distribute.recipe_strategy(recipe)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _checkpoint(out):
    """The checkpoint of the interrupted run at `out`, for `resume`; a one-line error when there is none."""
    if out is None:
        raise RunError("--resume needs the --out of the interrupted run")
    import_tensorflow_quietly()  # tftune.checkpoints imports Keras
    from tftune.checkpoints import RunCheckpoint

    checkpoint = RunCheckpoint(out)
    if not checkpoint.exists():
        raise RunError(f"{out}: no checkpoint to resume ({checkpoint.path} does not exist); run without --resume")
    return checkpoint


def _recorded_inputs(out):
    inputs = _checkpoint(out).load_state().get("inputs")
    if inputs is None:  # written before data were recorded (they were recipe settings then)
        raise DataError(f"{out}: its checkpoint does not record the run's data; give the same data again to resume")
    return inputs


def _recorded_files(out, roles):
    """The data files of the interrupted run at `out`, for `resume` without data: one argument per role."""
    inputs = _recorded_inputs(out)
    if any(isinstance(inputs.get(role), dict) for role in roles):
        raise DataError(f"{out}: the interrupted run was trained on examples in memory; give them again to resume")
    files = [[Path(item["path"]) for item in inputs[role]] if inputs.get(role) else None for role in roles]
    # A pretrain corpus may be several files; a labeled split is one.
    return [paths if role == "corpus" or paths is None else paths[0] for role, paths in zip(roles, files)]


def _recorded_reading(out):
    """How the interrupted run at `out` read its files (columns, encoding)."""
    return _recorded_inputs(out).get("reading", {})


def _check_before_training(plan, max_memory, base_run):
    """What can be told before the slow TensorFlow import: paths, data files and memory.

    Not under multi-worker training: there the chief checks `out` once every worker has joined
    the cluster, so that its error also stops the others (a process that ends before joining
    leaves them waiting), and the other workers never look.
    """
    from tftune import distribute
    from tftune.data import LABELED_SUFFIXES, TEXT_SUFFIXES, check_data_files
    from tftune.embeddings import vector_size
    from tftune.resources import check_fits, parse_size
    from tftune.runs import check_run_paths, check_writable_target

    recipe = plan.recipe
    if recipe.distribute.strategy == "multi-worker":
        if plan.resume:
            raise RunError(distribute.MULTI_WORKER_RESUME)
    else:
        # An --out over an input is refused even with --force.
        check_run_paths(recipe, plan.out, plan.from_runs, plan.resume, plan.data.files())
        check_writable_target(plan.out, plan.force, resume=plan.resume)
        check_data_files([path for _, path in plan.data.files()],
                         TEXT_SUFFIXES if plan.kind == "pretrain" else LABELED_SUFFIXES)
    limit = parse_size(max_memory) if max_memory is not None else None
    vocab_size, dim = None, vector_size(recipe.embeddings.path, recipe.embeddings.format)
    if base_run is not None:
        vocab_size, dim = base_run.vocab_size(), base_run.info.get("embedding_dim")
    check_fits(recipe, plan.kind, limit, vocab_size, dim)
