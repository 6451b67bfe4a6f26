"""Importing TensorFlow without the lines its C++ side prints at start-up.

TensorFlow prints CPU-feature and CUDA notices on stderr when it is first imported. The command
line and the Python API import it through `import_tensorflow_quietly`, so that a user sees only
tftune's own lines (set `TFTUNE_DEBUG=1` to see TensorFlow's).

Example:

>>> import_tensorflow_quietly()
>>> import tensorflow as tf  # already imported, silently
"""

import os
import sys


def import_tensorflow_quietly():
    """Imports TensorFlow (once) with its C++ logging at errors only and its start-up notices hidden."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or os.environ.get("TFTUNE_DEBUG"):
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hide (e.g. closed by the caller)
        import tensorflow  # noqa: F401

        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
