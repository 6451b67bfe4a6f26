"""Where a command may write: no output may be, hold or lie inside anything the command reads.

`check_output_paths` is the rule; `check_run_paths`, `check_export_paths` and
`check_convert_paths` apply it to a pretrain or finetune run (its `--out` and what it writes beside
it: checkpoint folder, live logs, lock file), to an export and to a run's conversion. Every command
calls them before it writes anything, `--force` or not, so e.g.
`tftune finetune --from runs/lm --out runs/lm --force` cannot delete the run it reads.

Example:

>>> check_output_paths([("--out", "runs/lm")], [("--from run", "runs/lm")])  # doctest: +SKIP
tftune.errors.RunError: --out runs/lm: is the --from run runs/lm (an input of this command); choose another --out
"""

import os
from pathlib import Path
from typing import NamedTuple

from tftune.data import check_input_file
from tftune.errors import RunError
from tftune.recipe import shipped_dirs


class Input(NamedTuple):
    """A file or folder that a command reads, for `check_output_paths`.

    Args:
        role: what it is to the command, for the message, e.g. "--from run" or "--train file".
        path: where it is.
        unread: names of subfolders of `path` that the command does not read, so an output may be
            one of them or lie inside it (e.g. `export/` of the run that `tftune export` exports).
    """

    role: str
    path: str | os.PathLike
    unread: tuple = ()


def hidden_sibling(path, suffix):
    """The hidden `.NAME.SUFFIX` beside `path`, e.g. the checkpoint folder or the lock file of a run."""
    path = Path(path)
    return path.with_name(f".{path.name}.{suffix}")


def _overlap(output, source, unread=()):
    """How `output` overlaps `source` ("is", "contains", "lies inside"), or None when it does not."""
    if output == source:
        return "is"
    if source.is_relative_to(output):
        return "contains"
    if output.is_relative_to(source) and not any(output.is_relative_to(source / name) for name in unread):
        return "lies inside"
    return None


def check_output_paths(outputs, inputs):
    """Refuses an output that is, contains or lies inside a file or folder the command reads.

    `--force` replaces an output whole and a run writes beside it too, so this is what keeps e.g.
    `tftune finetune --from runs/lm --out runs/lm --force` from deleting the run it fine-tunes.
    Call it before anything is written (on the command line, before the slow TensorFlow import).
    Paths are compared both as given (made absolute, `..` folded) and resolved (symbolic links
    followed), so an output reached through a link, or a link inside an output, counts as well;
    outputs need not exist yet. The shipped data folders (`tftune.recipe.shipped_dirs()`) are
    inputs of every command. A file output gets the same rule as a folder: a new `--plot` inside
    an input folder (the evaluated run) is refused too. Only an input's `unread` subfolders may
    hold an output.

    Args:
        outputs: `(name, path)` pairs of what the command writes, replaces or removes: first the
            option that names the output, e.g. `("--out", "runs/clf")`, then what the command
            also writes beside it, e.g. `("checkpoint folder", "runs/.clf.checkpoint")`.
        inputs: `Input`s, or `(role, path)` pairs, of every file and folder the command reads.

    Raises:
        RunError: one line that names the output, the input and the input's role.

    Example:

    >>> check_output_paths([("--out", "runs/lm")], [("--from run", "runs/lm")])  # doctest: +SKIP
    tftune.errors.RunError: --out runs/lm: is the --from run runs/lm (an input of this command); choose another --out
    """
    option, given = outputs[0]
    inputs = [Input(*entry) for entry in inputs] + [Input("shipped data folder", path) for path in shipped_dirs()]
    for index, (name, output) in enumerate(outputs):
        for role, source, unread in inputs:
            relation = _overlap(Path(os.path.abspath(output)), Path(os.path.abspath(source)), unread)
            through_links = ""
            if relation is None:
                real_output, real_source = Path(output).resolve(), Path(source).resolve()
                relation = _overlap(real_output, real_source, unread)
                if relation is None:
                    continue
                resolved = [f"{path} is {real}" for path, real in ((output, real_output), (source, real_source))
                            if real != Path(os.path.abspath(path))]
                through_links = f"; through a symbolic link, {' and '.join(resolved)}"
            what = "" if index == 0 else f"its {name} {output} "
            raise RunError(
                f"{option} {given}: {what}{relation} the {role} {source} (an input of this command"
                f"{through_links}); choose another {option}"
            )


def live_logs(out):
    """The hidden `.NAME.logs/` beside a run in progress, where TensorBoard's curves are written live;
    moved into the run (`Run.logs`) when it is published, kept with the checkpoint when it stops."""
    return hidden_sibling(out, "logs")


def run_outputs(out):
    """What a pretrain or finetune run writes, for `check_output_paths`: `out`, and beside it its
    checkpoint folder, live logs and lock file. (Its staging folders are new, uniquely named ones: they
    cannot hold an input.)"""
    if not Path(out).name:  # "." or "/": no siblings, and no run can be published there anyway
        return [("--out", out)]
    return [("--out", out), ("checkpoint folder", hidden_sibling(out, "checkpoint")),
            ("live TensorBoard logs", live_logs(out)), ("lock file", hidden_sibling(out, "lock"))]


def check_run_paths(recipe, out, from_runs=(), resume=False, data_files=()):
    """`check_output_paths` for a pretrain or finetune run that writes `out`.

    The run reads its `--from` runs, its data files (`--corpus` and `--valid`, or `--train`,
    `--valid` and `--test`), its vectors file (`embeddings.path`) and the recipe file. With `resume`, a recipe file inside the checkpoint folder of `out` is that checkpoint's
    own (`--resume` without `--recipe` reads it, and the run goes on from that folder by design),
    so it does not count as an input.

    Args:
        recipe: the resolved `Recipe`.
        out: the run directory to write.
        from_runs: the pretrain runs it starts from.
        resume: whether the run resumes from its checkpoint.
        data_files: `(label, path)` of each data file (`tftune.inputs.CorpusData.files()`).
    """
    outputs = run_outputs(out)
    inputs = [("--from run", path) for path in from_runs] + list(data_files)
    inputs.append(("vectors file (embeddings.path)", recipe.embeddings.path))
    for _, path in inputs[len(from_runs):]:  # a FIFO or a device would hang the run once it reads it
        if path:
            check_input_file(path, missing_ok=True)
    checkpoint = dict(outputs).get("checkpoint folder")
    if recipe.source is not None and not (
        resume and checkpoint is not None and recipe.source.resolve().is_relative_to(checkpoint.resolve())
    ):
        inputs.append(("recipe file", recipe.source))
    check_output_paths(outputs, inputs)


def check_export_paths(run_dir, out):
    """`check_output_paths` for exporting the finetune run `run_dir` to `out`.

    Exporting reads the run's files but not its `export/` folder, which it writes by default: `out`
    may be that folder, but not the run, a folder that holds it, or anything else inside it.
    """
    check_output_paths([("--out", out)], [Input("exported run", run_dir, unread=("export",))])


def check_convert_paths(run_dir, out):
    """`check_output_paths` for converting the format-1 run `run_dir` to `out` (`tftune convert`).

    The conversion reads every file of the run, so `out` may not be the run, lie inside it or
    hold it: with `--force` it would replace, or be published over, the run it converts.
    """
    check_output_paths([("--out", out)], [("format-1 run", run_dir)])
