"""Training requests, resolved once for the command line and the Python API.

`tftune.api` and `tftune.cli` train through these, so both resolve a run the same way:

- the recipe (`resolve_recipe`): `recipe=`/`--recipe` when given; else, with `resume`, the recipe
  saved with the checkpoint (an interrupted run goes on as it started); else the `--from` run's
  own; else the default recipe. Settings go on top.
- `--from` names (a shipped model's name or a run directory), and the data (`tftune.inputs`);
  with `resume` and no data, the files the interrupted run recorded.
- the checks that can be made before TensorFlow is imported: outputs against inputs, the data
  files, the memory the recipe needs.

`plan_pretrain` / `plan_finetune` return a `Plan`; `run_plan` trains it.

Example:

```python
plan = plan_finetune("lstm-glove-general", "task/train.csv", out="runs/clf")
metrics = run_plan(plan)
```
"""

import dataclasses
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tftune.errors import DataError, RunError
from tftune.inputs import corpus_data, labeled_data
from tftune.pretrained_models import bidirectional_members, resolve_run, resolve_runs
from tftune.quiet_import import import_tensorflow_quietly
from tftune.recipe import DEFAULT_RECIPE, LOCAL_DISTRIBUTE, Recipe, load_recipe
from tftune.runs import PretrainRun

logger = logging.getLogger(__name__)



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
    if from_runs and bidirectional_members(from_runs[0]) is not None:
        raise RunError(f"{from_run}: is a bidirectional run; continue it with --bidirectional, or give one of "
                       f"its directions (e.g. {Path(from_run) / 'forward'})")
    base = PretrainRun.open(from_runs[0], require=() if recipe else ("recipe_file",)) if from_runs else None
    resolved = resolve_recipe(recipe, settings, base, out, resume)
    _check_resumable_here(resolved, resume)
    out = Path(out if out is not None else f"runs/{resolved.name}-pretrain")
    if texts is None and resume:
        files, reading = _recorded_data(out, ("corpus", "valid"))
        data = corpus_data(*files, **reading)
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
    # A bidirectional run stands for its forward and backward runs.
    members = [PretrainRun.open(run, require=() if recipe else ("recipe_file",)) for run in resolve_runs(given)]
    resolved = resolve_recipe(recipe, settings, members[0], out, resume)
    _check_resumable_here(resolved, resume)
    out = Path(out if out is not None else f"runs/{resolved.name}-finetune")
    if train is None and resume:
        files, reading = _recorded_data(out, ("train", "valid", "test"))
        data = labeled_data(*files, **reading)
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
    settings = settings_list(settings)
    if isinstance(recipe, Recipe):
        return recipe.with_overrides(settings)
    if recipe is not None:
        return load_recipe(recipe, settings)
    if resume:
        return Recipe.from_toml_file(_checkpoint(out).recipe_file, settings)
    if base_run is not None:
        return Recipe.from_toml_file(base_run.recipe_file, [*LOCAL_DISTRIBUTE, *settings])
    return load_recipe(DEFAULT_RECIPE, settings)


def settings_list(settings):
    """Recipe settings, given as a mapping, one `"section.key=value"` string or a sequence, as a list."""
    if isinstance(settings, Mapping):
        return list(settings.items())
    return [settings] if isinstance(settings, str) else list(settings)


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


def _recorded_data(out, roles):
    """What the interrupted run at `out` was trained on, for `resume` without data: its files (one
    argument per role, None for a role it had not) and how it read them (columns, encoding)."""
    return recorded_files(_checkpoint(out).load_state().get("inputs"), roles, out)


def recorded_files(inputs, roles, where):
    """The files (one argument per role) and how they were read, from the `inputs` a checkpoint or
    `run.json` at `where` recorded; a one-line error when they were not files."""
    if inputs is None:  # written before data were recorded (they were recipe settings then)
        raise DataError(f"{where}: its checkpoint does not record the run's data; give the same data again to resume")
    if any(isinstance(inputs.get(role), dict) for role in roles):
        raise DataError(f"{where}: the interrupted run was trained on examples in memory; give them again to resume")
    files = [[Path(item["path"]) for item in inputs[role]] if inputs.get(role) else None for role in roles]
    # A pretrain corpus may be several files; a labeled split is one.
    files = [paths if role == "corpus" or paths is None else paths[0] for role, paths in zip(roles, files)]
    return files, inputs.get("reading", {})


def _check_resumable_here(recipe, resume):
    """Refuses `resume` under multi-worker training (only the chief keeps a checkpoint), before anything else."""
    from tftune import distribute

    if resume and recipe.distribute.strategy == "multi-worker":
        raise RunError(distribute.MULTI_WORKER_RESUME)


def _check_before_training(plan, max_memory, base_run):
    """What can be told before the slow TensorFlow import: paths, data files and memory.

    Not under multi-worker training: there the chief checks `out` once every worker has joined
    the cluster, so that its error also stops the others (a process that ends before joining
    leaves them waiting), and the other workers never look.
    """
    from tftune.data import LABELED_SUFFIXES, TEXT_SUFFIXES, check_data_files
    from tftune.embeddings import vector_size
    from tftune.resources import check_fits, parse_size
    from tftune.output_paths import check_run_paths
    from tftune.runs import check_writable_target

    recipe = plan.recipe
    if recipe.distribute.strategy != "multi-worker":
        # An --out over an input is refused even with --force.
        check_run_paths(recipe, plan.out, plan.from_runs, plan.resume, plan.data.files())
        check_writable_target(plan.out, plan.force, resume=plan.resume)
        check_data_files([path for _, path in plan.data.files()],
                         TEXT_SUFFIXES if plan.kind == "pretrain" else LABELED_SUFFIXES)
    limit = parse_size(max_memory) if max_memory is not None else None
    vocabulary_size, dim = None, vector_size(recipe.embeddings.path, recipe.embeddings.format)
    if base_run is not None:
        vocabulary_size, dim = base_run.vocabulary_size(), base_run.info.get("embedding_dim")
    check_fits(recipe, plan.kind, limit, vocabulary_size, dim)
