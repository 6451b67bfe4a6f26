"""tftune: ULMFiT-style transfer learning for text with Keras recurrent stacks on frozen vectors.

The Python API (`tftune.api`): `pretrain`, `finetune`, `load`, `predict` and `interpret`. They are imported on
first use, so that `import tftune` (and the command line) stays fast until TensorFlow is needed.

tftune's Keras objects (models, layers, the preprocessor, optimizers, schedules) are registered
with Keras as soon as Keras is imported, whoever imports it: after `import tftune`,
`keras.saving.load_model("classifier.keras")` works in a new process.

Example:

```python
import tftune

clf = tftune.finetune("lstm-glove-general", (texts, labels), out="runs/clf")
tftune.load("runs/clf").predict(["a gripping, moving film"])
```
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["finetune", "interpret", "load", "predict", "pretrain", "register_keras_objects"]

# The modules that define tftune's Keras-serializable objects (`@register_keras_serializable`).
_KERAS_OBJECT_MODULES = (
    "tftune.regularization",
    "tftune.fast_rnn",
    "tftune.schedules",
    "tftune.models.preprocessor",
    "tftune.models.backbone",
    "tftune.models.classifier",
    "tftune.models.language_model",
)


def register_keras_objects():
    """Registers every tftune object with Keras' serialization (importing Keras and TensorFlow).

    Done on its own once Keras is imported; call it only to register before that.
    """
    for name in _KERAS_OBJECT_MODULES:
        importlib.import_module(name)


def _importing_tftune():
    """Whether a tftune module is being imported right now (it may be the one that imports Keras)."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name == "tftune" or name.startswith("tftune.")
    )


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Registers tftune's objects right after the `keras` package is first imported.

    Importing Keras means importing TensorFlow (seconds), so `import tftune` does not: the command
    line's `--help` and its early errors stay fast. When tftune's own code is what imports Keras,
    registration waits for that import to finish (`tftune.models` and the API register then), so
    that no module is imported while it is half-initialized.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            if not _importing_tftune():
                register_keras_objects()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:  # only `tftune` itself is initializing here: its submodules import cleanly
    register_keras_objects()
elif not any(isinstance(finder, _RegisterAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())


def __getattr__(name):
    if name in ("finetune", "interpret", "load", "predict", "pretrain"):
        from tftune import api

        register_keras_objects()
        return getattr(api, name)
    raise AttributeError(f"module 'tftune' has no attribute {name!r}")
