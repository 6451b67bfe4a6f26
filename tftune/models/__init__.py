"""Keras models in keras-hub's shape: a backbone, and the tasks built on it.

- `TextBackbone` (`backbone.py`): the frozen embedding and the recurrent stack that every task
  shares.
- `LanguageModel` (`language_model.py`): the backbone with a next-token head, for pretraining.
- `TextClassifier` and `ClassifierEnsemble` (`classifier.py`): the backbone under concat pooling
  and an MLP head, and the average of several such classifiers.
- `preset_files.py`: `save_to_preset` and `from_preset` in keras-hub's preset layout (the files
  below), read with these classes alone: no recipe, no run-directory code.

Each model has `get_config`/`from_config` and saves to `.keras` files; that is the one way a
model is rebuilt (export, re-export, ensembles, `tftune.load`). Layer names are fixed
(`embedding`, `rnn_1` ... `rnn_N`, `lm_projection`, `lm_head`, `classifier_*`) so that weights
move between the tasks and the export by name.

Example:

>>> import numpy as np
>>> from tftune.models import TextBackbone, TextClassifier
>>> backbone = TextBackbone(vocabulary_size=100, embedding_dim=8, cell="gru", num_layers=2, units=16)
>>> classifier = TextClassifier(backbone, num_classes=3)
>>> classifier(np.array([[5, 6, 2, 0]])).shape
TensorShape([1, 3])
"""

import importlib

# The lists of choices these models take, defined here so that the recipe schema and the command
# line can import them without importing Keras.
CELLS = ("simple_rnn", "lstm", "gru")  # recurrent cell of every backbone layer
OUTPUTS = ("full", "sampled", "tied", "tied_sampled")  # the language model's next-token head
DIRECTIONS = ("forward", "backward")  # reading direction of a language model and its classifier
HEADS = ("concat_pool", "last")  # what the classifier reads from the backbone

# A preset's files (keras-hub's layout), named here so that run directories, which hold them, know
# them without importing Keras.
BACKBONE_CONFIG_FILE = "config.json"  # the backbone's class and config
TASK_CONFIG_FILE = "task.json"  # the task's class and config (backbone and preprocessor included)
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"  # the preprocessor's class and config
TOKENIZER_ASSETS_DIR = "assets/tokenizer"  # the preprocessor's assets: its vocabulary
BACKBONE_WEIGHTS_FILE = "model.weights.h5"  # the backbone's weights
TASK_WEIGHTS_FILE = "task.weights.h5"  # the task's weights but the backbone's
METADATA_FILE = "metadata.json"  # tftune and Keras versions, date, parameter count

# Each public name and the submodule that defines it; imported on first use (PEP 562), so that
# `from tftune.models import CELLS` stays free of Keras.
_EXPORTS = {
    "backbone": ("DROPOUT_RATES", "TextBackbone", "build_encoder", "cudnn_report", "global_policy_restored",
                 "make_recurrent_layer", "recurrent_layer_names"),
    "classifier": ("ClassifierEnsemble", "ConcatPooling", "LogProbabilities", "ReverseTokens", "TextClassifier",
                   "WordVectorFeatures",
                   "ensemble_members"),
    "language_model": ("LanguageModel", "TiedOutput", "build_language_model"),
    "preprocessor": ("TextPreprocessor",),
    "preset_files": ("load_backbone", "load_preprocessor", "load_task", "preset_folder", "save_to_preset"),
    "task": ("ClassifierTask", "Task"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(["CELLS", "DIRECTIONS", "HEADS", "OUTPUTS", *_MODULE_OF])


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    import tftune

    if not tftune._importing_tftune():  # Keras is imported now; register the rest of tftune's objects with it
        tftune.register_keras_objects()
    return value


def __dir__():
    return __all__
