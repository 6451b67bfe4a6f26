"""Run directories: written in a temporary place, then moved into place whole.

A run (pretrain or finetune) writes all its files into a hidden sibling directory and renames
it to `--out` only when everything succeeded, so a crash or a bad input never leaves a
half-written run that a later command could mistake for a complete one. An existing non-empty
`--out` is only replaced with `force=True`, and only once the new run is complete.

Example:

>>> with RunDirectory("runs/pretrain", force=False) as run:  # doctest: +SKIP
...     run.write_json("metrics.json", {"valid": {"perplexity": 123.4}})
"""

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from tftune.errors import RunError, TftuneError, WriteError

RUN_INFO = "run.json"
# Failed writes that are the machine's, not the input's: the message says which, and nothing is left behind.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)


def write_failure(error):
    """The reason (e.g. "No space left on device") when `error` is a write the system refused, else None.

    Looks at the exception and its causes: h5py and TensorFlow wrap the operating system's error,
    sometimes only in their message.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            return os.strerror(error.errno)
        text = str(error)
        for code in _WRITE_ERRNOS:
            if os.strerror(code) in text:
                return os.strerror(code)
        error = error.__cause__ or error.__context__
    return None


def check_writable_target(out, force):
    """Fails early (before any training) when `out` exists and would be overwritten."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunError(f"{out}: exists and is not empty; choose another --out or pass --force to replace it")


@contextlib.contextmanager
def exclusive_output(out, force):
    """Holds a lock beside `out` for the whole run, so two processes never write the same run.

    The lock file (`.NAME.lock` in the parent directory) is an advisory `flock`: the operating
    system releases it when the process dies, so a crashed run never leaves a stale lock.
    """
    out = Path(out)
    check_writable_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(f".{out.name}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{out}: another tftune process is writing this run (lock {lock_path})") from None
        try:
            yield out
        finally:
            lock_path.unlink(missing_ok=True)


def holds_output_lock(train_function):
    """Runs `train_function` under `exclusive_output` for its `out` and `force` arguments."""
    signature = inspect.signature(train_function)

    @functools.wraps(train_function)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with exclusive_output(bound.arguments["out"], bound.arguments["force"]):
            return train_function(*args, **kwargs)

    return locked


def replace_directory(staging, out):
    """Moves a finished `staging` directory to `out`, replacing what was there."""
    out = Path(out)
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(backup)
    Path(staging).rename(out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


class RunDirectory:
    """A context manager that stages a run directory and publishes it on success.

    Args:
        out: the final directory.
        force: replace an existing non-empty `out`.
    """

    def __init__(self, out, force=False):
        self.out = Path(out)
        self.force = force
        self.path = None

    def __enter__(self):
        check_writable_target(self.out, self.force)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        except OSError as e:
            raise WriteError(f"{self.out}: cannot create the run directory ({e.strerror}); nothing was written") from e
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            reason = None if isinstance(exc, TftuneError) else write_failure(exc)
            if reason is not None:
                raise WriteError(f"{self.out}: writing the run failed ({reason}); nothing was written") from exc
            return False
        os.chmod(self.path, 0o755)
        replace_directory(self.path, self.out)
        self.path = self.out
        return False

    def file(self, name):
        return self.path / name

    def write_json(self, name, data):
        write_json(self.path / name, data)

    def write_text(self, name, text):
        (self.path / name).write_text(text, encoding="utf-8")


def write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_run_info(path, kind, required=()):
    """Reads `run.json` of a run directory and checks that it is a complete run of `kind`."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    info_path = path / RUN_INFO
    if not info_path.is_file():
        raise RunError(f"{path}: not a tftune run directory (no {RUN_INFO})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise RunError(f"{info_path}: unreadable ({e})") from None
    if info.get("kind") != kind:
        raise RunError(f"{path}: is a {info.get('kind', 'unknown')} run, expected a {kind} run")
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise RunError(f"{path}: incomplete {kind} run, missing {', '.join(missing)}")
    return info


def check_vector_size(recipe, from_run):
    """Fails when the recipe's vectors have another dimension than those the pretrain run was trained on.

    A run continued or fine-tuned from `from_run` keeps that run's embedding, so vectors of another
    size in `embeddings.path` (e.g. from `--embeddings`) can only be a mistake. Files whose size
    cannot be read cheaply (missing, keyedvectors) are not checked: the run does not need them.
    """
    from tftune.embeddings import vector_size  # imports TensorFlow

    trained = read_run_info(from_run, "pretrain").get("embedding_dim")
    settings = recipe["embeddings"]
    size = vector_size(settings["path"], settings["format"])
    if size is not None and trained is not None and size != trained:
        raise RunError(
            f"embeddings.path: {Path(settings['path']).name} holds {size}-d vectors, but the pretrain run "
            f"{from_run} was trained on {trained}-d vectors and runs built on it keep them; drop the other "
            "vectors (--embeddings, or the --recipe's embeddings.path)"
        )
