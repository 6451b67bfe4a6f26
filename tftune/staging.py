"""Writing a folder crash-safe: staged beside its place, published by one rename.

A folder is written into a new hidden sibling (`.NAME.tmp-*`) and renamed to its place once
whole (`staged_directory`, `replace_directory`), so a crash, a signal or a full disk never leaves a
half-written folder where a later command could read it. A write the system refuses (disk full,
file too large, read-only) is told apart from a bug (`write_failure`), and the HDF5 files such a
write leaves open are closed (`close_failed_h5_files`) so that the process can end cleanly.
`fault_point` lets the tests stop a process at each of these moments (`tests/test_faults.py`).

Example:

>>> with staged_directory("runs/notes") as staging:  # doctest: +SKIP
...     (staging / "notes.txt").write_text("written whole or not at all")
"""

import contextlib
import errno
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

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


def close_failed_h5_files(folder):
    """Closes the HDF5 files under `folder` that a failed write (a full disk) left open.

    h5py keeps such a file open with its unwritten buffers; they are flushed again when the object
    is freed and when Python exits, which prints tracebacks and then crashes the process. Each file
    is emptied first (it is being discarded), so that closing it needs no space.
    """
    if "h5py" not in sys.modules:
        return
    import h5py

    folder = Path(folder).resolve()
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        with contextlib.suppress(Exception):
            if Path(os.fsdecode(file_id.name)).resolve().is_relative_to(folder):
                with contextlib.suppress(OSError):
                    os.ftruncate(file_id.get_vfd_handle(), 0)
                h5py.File(file_id).close()


# === Fault injection, for the tests ===

# `TFTUNE_FAULT=POINT:ACTION[:N]` stops the process the Nth time (default 1st) it reaches POINT,
# one of FAULT_POINTS, by ACTION: `kill` (SIGKILL), `term` (SIGTERM), `int` (SIGINT) or `enospc`
# (an OSError "No space left on device" raised from the write). Read only where files are written;
# it fires once, then leaves the environment, so that a test may go on in the same process.
FAULT_POINTS = ("checkpoint", "run-file", "publish", "published", "export", "export-publish")
_fault_counts = {}


def fault_point(name):
    """Stops the process here when `TFTUNE_FAULT` names this point (tests/test_faults.py); else nothing."""
    spec = os.environ.get("TFTUNE_FAULT")
    if not spec or spec.split(":")[0] != name:
        return
    _, action, *nth = spec.split(":")
    _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
    if _fault_counts[spec] != int(nth[0] if nth else 1):
        return
    del _fault_counts[spec], os.environ["TFTUNE_FAULT"]
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    # A handled signal (SIGTERM, SIGINT) raises here, at the next bytecode, as a real one would.
    os.kill(os.getpid(), {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[action])


@contextlib.contextmanager
def staged_directory(out, fault=None):
    """A new hidden folder `.NAME.tmp-*` beside `out` to write into, moved to `out` whole when the
    block succeeds and removed when it fails (an error, SIGINT, SIGTERM).

    Args:
        out: the folder to publish; an earlier one is replaced (`replace_directory`).
        fault: the `fault_point` just before publishing.
    """
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        replace_directory(staging, out, fault=fault)
    except BaseException:
        close_failed_h5_files(staging)
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging, out, fault=None):
    """Moves a finished `staging` directory to `out`, replacing what was there.

    A process that dies between the two renames leaves `.NAME.old-PID`, which the next command on
    `out` puts back (`clean_stale_outputs`). `fault` names the `fault_point` just before publishing.
    """
    out = Path(out)
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(backup)
    if fault is not None:
        fault_point(fault)
    Path(staging).rename(out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
