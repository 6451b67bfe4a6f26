"""The lock on an output being written, and the clean-up of what a process that died left there.

`exclusive_output` holds `.NAME.lock` beside `--out` while a command writes it (through
`filelock`, an operating-system lock released when the process dies). Holding it, the command
knows whatever else lies beside `--out` is a dead process's: staging folders, the half of a
replaced folder, the checkpoint of a run it had published. `clean_stale_outputs` removes them (or
puts a replaced run back) and says so in one line.

Example:

>>> with exclusive_output("runs/clf", force=False):  # doctest: +SKIP
...     ...  # write runs/clf
"""

import contextlib
import functools
import inspect
import logging
import shutil
from pathlib import Path

from tftune.errors import Interrupted, RunError, WriteError
from tftune.output_paths import hidden_sibling, live_logs
from tftune.runs import CHECKPOINT_STATE, Run, check_writable_target, checkpoint_published

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive_output(out, force, resume=False, replaces="run"):
    """Holds a lock beside `out` for the whole run, so two processes never write the same run.

    The lock file (`.NAME.lock` in the parent directory) is taken with `filelock`: an operating-system
    lock (`flock` on Unix, `LockFileEx` on Windows) that is released when the process dies, so a
    crashed run never blocks the next one. Once it holds the lock, this process is the only one
    writing `out`, so whatever else lies beside `out` was left by a process that died: it is
    cleaned up first (`clean_stale_outputs`), and said so in one line.

    Args:
        out, force, replaces: as in `check_writable_target`.
        resume: the run resumes from its checkpoint.

    Yields:
        Whether `out` is a run that was published before its process died, with `resume`: there is
        nothing left to train.
    """
    import filelock  # not at import time: `import tftune` and the commands that take no lock need no lock library

    out = Path(out)
    lock_path = hidden_sibling(out, "lock")
    left_behind = lock_path.exists()
    lock = filelock.FileLock(lock_path, timeout=0)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except filelock.Timeout:
        raise RunError(f"{out}: another tftune process is writing this run (lock {lock_path})") from None
    except OSError as e:  # a read-only or full disk, a folder without write permission
        raise WriteError(f"{out}: cannot write in the folder {out.parent} ({e.strerror or e}); nothing was written"
                         ) from None
    except BaseException:  # SIGINT or SIGTERM while the lock is taken: the lock file goes if it is ours
        if lock.is_locked or not left_behind:
            lock_path.unlink(missing_ok=True)
        lock.release()
        raise
    try:
        published = clean_stale_outputs(out, stale_lock=left_behind)
        if not (resume and published):
            check_writable_target(out, force, replaces)
        yield resume and published
    finally:
        lock_path.unlink(missing_ok=True)  # while still held: a waiting process then fails rather than locks it
        lock.release()


def holds_output_lock(train_function):
    """Runs `train_function` under `exclusive_output` for its `out`, `force` and `resume` arguments.

    A `resume` of a run that was published before its process died returns the run's metrics
    without training again. A SIGINT or SIGTERM outside training (the training's own checkpoint
    handles those) says what it left: nothing, or the run's last checkpoint.
    """
    signature = inspect.signature(train_function)

    @functools.wraps(train_function)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = bound.arguments["out"]
        with exclusive_output(out, bound.arguments["force"], bound.arguments.get("resume", False)) as published:
            if published:
                logger.info(f"{out}: the run had been published before its process stopped; nothing left to do")
                return Run(out).metrics()
            try:
                return train_function(*args, **kwargs)
            except BaseException as error:
                checkpointed = (hidden_sibling(out, "checkpoint") / CHECKPOINT_STATE).is_file()
                if not checkpointed:
                    shutil.rmtree(live_logs(out), ignore_errors=True)  # curves are kept with a checkpoint only
                if not isinstance(error, KeyboardInterrupt):
                    raise
                if checkpoint_published(out):  # stopped between publishing the run and removing its checkpoint
                    clean_stale_outputs(out)
                    raise Interrupted(f"{out}: interrupted once the run was written; the run is complete") from None
                if checkpointed:
                    raise Interrupted(f"{out}: interrupted before the run was written; its last checkpoint is kept, "
                                      "resume with the same command and --resume") from None
                raise

    return locked


# === Debris of a process that died ===


def _leftovers(out):
    """The paths of what a run (or export) writing `out` leaves beside it while it works: staging
    folders of the run and of its checkpoint, and backups of a replaced folder."""
    out = Path(out)
    prefixes = (f".{out.name}.tmp-", f".{out.name}.checkpoint.tmp-", f".{out.name}.old-",
                f".{out.name}.checkpoint.old-")
    if not out.parent.is_dir():
        return []
    return sorted(path for path in out.parent.iterdir() if path.name.startswith(prefixes))


def clean_stale_outputs(out, stale_lock=False):
    """Removes what a process that died while writing `out` left behind; call it holding the lock.

    - Staging folders (`.NAME.tmp-*`, `.NAME.checkpoint.tmp-*`): never published, removed.
    - A backup (`.NAME.old-*`) of a folder being replaced: put back when the folder is missing (the
      process died between the two renames), else removed.
    - The checkpoint of a run that was published (its `run.json` names the checkpoint's `run_id`):
      the process died before removing it; removed with its live logs.

    Logs one line saying what it did. Returns whether `out` is such a published run.
    """
    out = Path(out)
    done = ["its lock"] if stale_lock else []
    for path in _leftovers(out):
        stem, _, suffix = path.name.rpartition(".")  # e.g. (".NAME", "tmp-x1y2") or (".NAME.checkpoint", "old-42")
        target = out if stem == f".{out.name}" else path.with_name(stem)
        if suffix.startswith("old-") and not target.exists():
            path.rename(target)
            done.append(f"put back {target.name} from {path.name}")
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(f"removed {path.name}")
    checkpoint = hidden_sibling(out, "checkpoint")
    if checkpoint.is_dir() and not (checkpoint / CHECKPOINT_STATE).is_file():  # removed part-way
        shutil.rmtree(checkpoint, ignore_errors=True)
        done.append(f"removed the incomplete {checkpoint.name}")
    published = checkpoint_published(out)
    if published:
        shutil.rmtree(hidden_sibling(out, "checkpoint"), ignore_errors=True)
        shutil.rmtree(live_logs(out), ignore_errors=True)
        done.append("removed the checkpoint of the published run")
    if done:
        logger.info(f"{out}: cleaned up after a process that stopped while writing it: {'; '.join(done)}")
    return published
