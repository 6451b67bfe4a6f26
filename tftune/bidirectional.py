"""Bidirectional runs: ULMFiT's target-domain step for a forward and a backward language model in one command.

`tftune pretrain --from lstm-glove-general --bidirectional --corpus task.txt --out runs/lm`
continues the forward model and its backward partner on the same corpus, and writes one
bidirectional run: a folder with a `run.json` of kind `"bidirectional-pretrain"` and two whole
pretrain runs, `forward/` and `backward/`. `tftune finetune --from runs/lm` fine-tunes the
ensemble of both (one classifier per direction, one SavedModel).

- Partners: a pretrain run (a shipped model, say) names the run of the other direction in its
  `run.json`, `"partners": {"backward": "lstm-glove-general-backward"}` (written by
  `tftune.pretrained_models.publish`); a name is looked up beside the run first, then among the
  shipped models. A bidirectional run given to `--from` brings both of its own.
- Writing: both directions train into a hidden work folder beside `--out` (`.NAME.bidirectional`),
  each as an ordinary pretrain run with its own checkpoint; the folder is renamed to `--out`
  once both are written, so `--out` never holds one direction alone.
- Resuming: `--resume` skips a direction already written and continues the interrupted one from
  its checkpoint; without data, the files the interrupted run recorded are read again.

Example:

```python
plan = plan_bidirectional("task.txt", out="runs/lm", from_run="lstm-glove-general")
metrics = run_bidirectional(plan)  # {"forward": {...}, "backward": {...}}
```
"""

import dataclasses
import logging
import shutil
from pathlib import Path

from tftune.errors import DataError, RunError
from tftune.models import DIRECTIONS
from tftune.plans import plan_pretrain, recorded_files, resolve_recipe, run_plan, settings_list
from tftune.pretrained_models import BIDIRECTIONAL_KIND, bidirectional_members, resolve_run
from tftune.output_paths import check_output_paths, hidden_sibling, run_outputs
from tftune.runs import (CHECKPOINT_STATE, FORMAT_VERSION, RUN_INFO, PretrainRun, check_writable_target,
                         checkpoint_published, read_json, write_json)
from tftune.staging import replace_directory

logger = logging.getLogger(__name__)

def partner_runs(from_run):
    """`{"forward": run, "backward": run}` for `--from from_run --bidirectional`: the run and its partner.

    A one-line `DataError` when the run names no partner of the other direction.
    """
    path = resolve_run(from_run)
    own = bidirectional_members(path)
    if own is not None:
        return own
    run = PretrainRun.open(path, require=("recipe_file",))
    direction = run.recipe.pretrain.direction
    other = next(each for each in DIRECTIONS if each != direction)
    name = (run.info.get("partners") or {}).get(other)
    if not name:
        raise DataError(f"{from_run}: names no {other} partner, so --bidirectional cannot pretrain both "
                        f"directions; give a pretrain run or shipped model that has one (`tftune pretrained list`)")
    sibling = path.parent / name
    try:
        partner = sibling if sibling.is_dir() else resolve_run(name)
        partner_direction = PretrainRun.open(partner, require=("recipe_file",)).recipe.pretrain.direction
    except RunError as e:
        raise DataError(f"{from_run}: its {other} partner {name} cannot be used ({e})") from None
    if partner_direction != other:
        raise DataError(f"{from_run}: its {other} partner {name} reads {partner_direction}, not {other}")
    found = {direction: path, other: partner}
    return {each: found[each] for each in DIRECTIONS}  # forward first: the ensemble's member order


@dataclasses.dataclass(frozen=True)
class BidirectionalPlan:
    """What `run_bidirectional` trains and writes.

    Attributes:
        out: the bidirectional run to write.
        work: the hidden folder both directions train in, renamed to `out` when both are written.
        plans: `{direction: tftune.plans.Plan}`, None for a direction a resumed run already wrote.
        from_runs: `{direction: pretrain run}` the directions continue.
        force: replace an existing run at `out`, and start over from an interrupted one.
        resume: continue the interrupted run in `work`.
    """

    out: Path
    work: Path
    plans: dict
    from_runs: dict
    force: bool = False
    resume: bool = False


def plan_bidirectional(texts=None, *, out=None, valid=None, from_run=None, recipe=None, settings=(), force=False,
                       resume=False, text_column="text", encoding="utf-8", max_memory=None):
    """Resolves `pretrain --bidirectional` and checks it, as `tftune.plans.plan_pretrain` does for each direction.

    Args:
        texts, out, valid, from_run, recipe, settings, force, resume, text_column, encoding, max_memory:
            as for `tftune.plans.plan_pretrain`; `from_run` is required. A `recipe` given applies to
            both directions, each with its own `pretrain.direction`.

    Returns:
        The `BidirectionalPlan`.
    """
    if from_run is None:
        raise DataError("--bidirectional needs --from: a forward pretrain run or shipped model that names its "
                        "backward partner, or a bidirectional run")
    from_runs = partner_runs(from_run)
    if out is None:
        base = PretrainRun.open(from_runs["forward"], require=() if recipe else ("recipe_file",))
        out = f"runs/{resolve_recipe(recipe, settings, base).name}-pretrain"
    out, work = Path(out), hidden_sibling(out, "bidirectional")
    _check_work_folder(out, work, force, resume)
    check_writable_target(out, force)
    if texts is None and resume:
        (texts, valid), reading = _recorded_data(work)
        text_column, encoding = reading.get("text_column", text_column), reading.get("encoding", encoding)
    plans = {}
    for direction, base_run in from_runs.items():
        target = work / direction
        if resume and PretrainRun.kind_at(target) == PretrainRun.kind:
            logger.info(f"{direction} language model already written in {target}; resuming the other")
            plans[direction] = None
            continue
        interrupted = resume and (hidden_sibling(target, "checkpoint") / CHECKPOINT_STATE).is_file()
        direction_settings = [*settings_list(settings), ("pretrain.direction", direction)] if recipe else settings
        plans[direction] = plan_pretrain(
            texts, out=target, valid=valid, from_run=base_run, recipe=recipe, settings=direction_settings,
            force=force and not resume, resume=interrupted, text_column=text_column, encoding=encoding,
            max_memory=max_memory)
    data_files = [file for plan in plans.values() if plan is not None for file in plan.data.files()]
    # Each direction's plan checked its own run; --force replaces `out` and starts `work` over.
    check_output_paths([*run_outputs(out), ("bidirectional work folder", work)],
                       [*[("--from run", path) for path in from_runs.values()], *data_files])
    return BidirectionalPlan(out, work, plans, from_runs, force, resume)


def run_bidirectional(plan, callbacks=(), strategy=None):
    """Trains the directions `plan` has left, then publishes both as one run; returns `{direction: metrics}`."""
    if not plan.resume and plan.work.exists():  # --force: start over from an interrupted run
        shutil.rmtree(plan.work)
    plan.work.mkdir(parents=True, exist_ok=True)
    for direction, direction_plan in plan.plans.items():
        if direction_plan is not None:
            logger.info(f"bidirectional: the {direction} language model")
            run_plan(direction_plan, callbacks=callbacks, strategy=strategy)
        elif checkpoint_published(plan.work / direction):  # its process died before removing it
            shutil.rmtree(hidden_sibling(plan.work / direction, "checkpoint"))
    from tftune import __version__

    write_json(plan.work / RUN_INFO, {
        "kind": BIDIRECTIONAL_KIND, "format": FORMAT_VERSION, "tftune_version": __version__,
        "members": {direction: direction for direction in plan.plans},
        "from_runs": {direction: str(path) for direction, path in plan.from_runs.items()},
    })
    check_writable_target(plan.out, plan.force)
    replace_directory(plan.work, plan.out, fault="publish")
    logger.info(f"bidirectional run written to {plan.out}")
    runs = bidirectional_members(plan.out)
    return {direction: PretrainRun.open(path, require=()).metrics() for direction, path in runs.items()}


def _check_work_folder(out, work, force, resume):
    """Refuses to start over an interrupted run without `force`, and to resume none."""
    if resume and not work.is_dir():
        raise RunError(f"{out}: no interrupted bidirectional run to resume ({work} does not exist); "
                       "run without --resume")
    if not resume and work.exists() and not force:
        raise RunError(f"{out}: an interrupted bidirectional run is in {work}; pass --resume to continue it, "
                       "or --force to start over")


def _recorded_data(work):
    """`((corpus, valid), reading)` that the interrupted run in `work` recorded: a direction's
    checkpoint, else a direction already written."""
    for direction in DIRECTIONS:
        target = work / direction
        for record in (hidden_sibling(target, "checkpoint") / CHECKPOINT_STATE, target / RUN_INFO):
            if record.is_file():
                return recorded_files(read_json(record).get("inputs"), ("corpus", "valid"), target)
    raise DataError(f"{work}: no direction was started; give the data again to resume")

