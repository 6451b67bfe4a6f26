"""Keras models in keras-hub's shape: a backbone, and the tasks built on it.

- `TextBackbone` (`backbone.py`): the frozen embedding and the recurrent stack that every task
  shares.
- `LanguageModel` (`language_model.py`): the backbone with a next-token head, for pretraining.
- `TextClassifier` and `ClassifierEnsemble` (`classifier.py`): the backbone under concat pooling
  and an MLP head, and the average of several such classifiers.
- `presets.py`: each model's config from a recipe, and `from_preset` loading from shipped models
  and runs.

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

from tftune.models.backbone import (
    CELLS,
    DROPOUT_RATES,
    TextBackbone,
    build_encoder,
    cudnn_report,
    global_policy_restored,
    make_recurrent_layer,
    recurrent_layer_names,
)
from tftune.models.classifier import (
    DIRECTIONS,
    HEADS,
    ClassifierEnsemble,
    ConcatPooling,
    LogProbabilities,
    ReverseTokens,
    TextClassifier,
    ensemble_members,
)
from tftune.models.language_model import OUTPUTS, LanguageModel, TiedOutput, build_language_model

__all__ = [
    "CELLS",
    "DIRECTIONS",
    "DROPOUT_RATES",
    "HEADS",
    "OUTPUTS",
    "ClassifierEnsemble",
    "ConcatPooling",
    "LanguageModel",
    "LogProbabilities",
    "ReverseTokens",
    "TextBackbone",
    "TextClassifier",
    "TiedOutput",
    "build_encoder",
    "build_language_model",
    "cudnn_report",
    "ensemble_members",
    "global_policy_restored",
    "make_recurrent_layer",
    "recurrent_layer_names",
]
