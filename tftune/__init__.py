"""tftune: ULMFiT-style transfer learning for text with Keras recurrent stacks on frozen vectors.

The Python API (`tftune.api`): `pretrain`, `finetune`, `load` and `predict`. They are imported on
first use, so that `import tftune` (and the command line) stays fast until TensorFlow is needed.

Example:

```python
import tftune

clf = tftune.finetune("lstm-glove-general", (texts, labels), out="runs/clf")
tftune.predict("runs/clf", ["a gripping, moving film"])
```
"""

__version__ = "0.1.0"
__all__ = ["finetune", "load", "predict", "pretrain"]


def __getattr__(name):
    if name in __all__:
        from tftune import api

        return getattr(api, name)
    raise AttributeError(f"module 'tftune' has no attribute {name!r}")
