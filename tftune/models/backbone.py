"""The backbone: a frozen word embedding under a stack of recurrent layers.

`TextBackbone` is the encoder that every task shares: the language model pretrains it, the
classifier fine-tunes it. Its layer names are fixed (`embedding`, `rnn_1` ... `rnn_N` from the
bottom up) so that weights move between the language model, the classifier and the export by name.

Example:

>>> import numpy as np
>>> backbone = TextBackbone(vocabulary_size=100, embedding_dim=8, cell="gru", num_layers=2, units=16)
>>> backbone(np.array([[5, 6, 2, 0]])).shape
TensorShape([1, 4, 16])
>>> TextBackbone.from_config(backbone.get_config()).count_params() == backbone.count_params()
True
"""

import contextlib

import keras
import numpy as np
from keras import layers

from tftune.fast_rnn import FastGRU, FastLSTM, FastSimpleRNN
from tftune.models import CELLS
from tftune.regularization import LockedDropout, WordDropout

_CELL_LAYERS = dict(zip(CELLS, (FastSimpleRNN, FastLSTM, FastGRU)))  # in the order of CELLS

# The backbone's regularization: each rate acts in training only and adds no weights.
DROPOUT_RATES = ("dropout", "weight_dropout", "embedding_dropout", "input_dropout", "hidden_dropout")


@contextlib.contextmanager
def global_policy_restored():
    """Puts Keras' global dtype policy back as it was when the block ends, however it ends.

    Building models under a recipe's `precision.policy` sets the global policy; this keeps a
    `pretrain`, `finetune` or export call from leaving it changed in the caller's process (a
    notebook, say).

    Example:

    ```python
    with global_policy_restored():
        keras.mixed_precision.set_global_policy("mixed_float16")
        backbone = TextBackbone(...)
    ```
    """
    previous = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def deserialized(config, key):
    """A copy of a task's config with its nested model(s) under `key` rebuilt (`from_config` of a task).

    Example:

    >>> backbone = TextBackbone(100, 8, "gru", 1, 4)
    >>> config = {"backbone": keras.saving.serialize_keras_object(backbone)}
    >>> type(deserialized(config, "backbone")["backbone"]).__name__
    'TextBackbone'
    """
    value = config.get(key)
    if value is None:  # e.g. a task without a preprocessor, or a config written before it had one
        return {**config, key: None}

    def rebuild(item):  # a part already built (e.g. a preset's loaded backbone) is kept as it is
        return keras.saving.deserialize_keras_object(item) if isinstance(item, dict) else item

    return {**config, key: [rebuild(item) for item in value] if isinstance(value, list) else rebuild(value)}


def serialized(layer):
    """`keras.saving.serialize_keras_object(layer)`, or None for a task's absent part (`get_config` of a task)."""
    return None if layer is None else keras.saving.serialize_keras_object(layer)


def recurrent_layer_names(n_layers):
    """Names of the recurrent layers, bottom first."""
    return [f"rnn_{i}" for i in range(1, n_layers + 1)]


def make_recurrent_layer(cell, units, name, use_cudnn="auto", weight_dropout=0.0):
    """One recurrent layer with the settings that keep cuDNN usable on a GPU.

    Keras' defaults already match cuDNN's conditions (tanh / sigmoid, `recurrent_dropout=0`,
    `unroll=False`, `use_bias=True`); GRU also needs `reset_after=True`. Masks are
    right-padded by construction of the input pipeline. `use_cudnn=False` forces the portable
    kernel, as used for export. The layers are `tftune.fast_rnn`'s subclasses of the Keras
    layers: the same weights and files, with a faster kernel wherever cuDNN is not used.
    `weight_dropout` (DropConnect on the recurrent kernel) keeps both kernels.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
    options = {"units": units, "return_sequences": True, "name": name, "weight_dropout": weight_dropout}
    if cell == "gru":
        options["reset_after"] = True
    if cell != "simple_rnn":
        options["use_cudnn"] = use_cudnn
    return _CELL_LAYERS[cell](**options)


def cudnn_report(encoder):
    """One line per recurrent layer: whether Keras can run it with cuDNN on a GPU, and why not."""
    lines = []
    for layer in encoder.layers:
        if not isinstance(layer, (layers.LSTM, layers.GRU, layers.SimpleRNN)):
            continue
        reasons = []
        if isinstance(layer, layers.SimpleRNN):
            reasons.append("SimpleRNN has no cuDNN kernel in Keras")
        else:
            cell = layer.cell
            if cell.activation is not keras.activations.tanh:
                reasons.append("activation is not tanh")
            if cell.recurrent_activation is not keras.activations.sigmoid:
                reasons.append("recurrent_activation is not sigmoid")
            if cell.recurrent_dropout:
                reasons.append("recurrent_dropout > 0")
            if layer.unroll:
                reasons.append("unroll=True")
            if not cell.use_bias:
                reasons.append("use_bias=False")
            if isinstance(layer, layers.GRU) and not cell.reset_after:
                reasons.append("reset_after=False")
            if layer.use_cudnn is False:
                reasons.append("use_cudnn=False")
        verdict = "cuDNN-eligible" if not reasons else "not cuDNN-eligible: " + ", ".join(reasons)
        lines.append(f"{layer.name} ({type(layer).__name__}, {layer.units} units): {verdict}")
    return lines


@keras.saving.register_keras_serializable(package="tftune")
class TextBackbone(keras.Model):
    """The shared encoder: a frozen embedding, then `num_layers` recurrent layers.

    A functional Keras model mapping int ids `[batch, time]` (0 is padding, masked) to hidden
    states `[batch, time, units]`, with the padding mask attached. The embedding starts at zero
    unless `embeddings` is given; `from_preset` and weight files fill it. The AWD-LSTM rates act
    in training only and add no weights: the layers' names and weight files are the same
    whatever the rates.

    Args:
        vocabulary_size: rows of the embedding (the vocabulary, padding and specials included).
        embedding_dim: width of the word vectors.
        cell: `"simple_rnn"`, `"lstm"` or `"gru"`.
        num_layers: number of stacked recurrent layers.
        units: units per recurrent layer.
        dropout: dropout rate after the embedding and after each recurrent layer.
        weight_dropout: DropConnect rate on every layer's recurrent kernel, one mask per batch.
        embedding_dropout: share of the vocabulary whose vectors are zeroed for a batch
            (`WordDropout`).
        input_dropout: locked dropout rate on the first recurrent layer's input (`LockedDropout`).
        hidden_dropout: locked dropout rate between recurrent layers.
        use_cudnn: passed to LSTM/GRU (`"auto"` for training, `False` for export).
        embeddings: optional float array `[vocabulary_size, embedding_dim]`, the aligned
            pretrained vectors (row 0 is the padding token). Not part of the config: the
            weights carry it.
        **kwargs: passed to `keras.Model` (`name`, default `"encoder"`).

    Example:

    >>> import numpy as np
    >>> vectors = np.random.rand(100, 8).astype("float32")
    >>> backbone = TextBackbone(100, 8, "lstm", 1, 16, embeddings=vectors)
    >>> bool(np.allclose(backbone.get_layer("embedding").embeddings.numpy(), vectors))
    True
    """

    def __init__(
        self,
        vocabulary_size,
        embedding_dim,
        cell,
        num_layers,
        units,
        dropout=0.0,
        weight_dropout=0.0,
        embedding_dropout=0.0,
        input_dropout=0.0,
        hidden_dropout=0.0,
        use_cudnn="auto",
        embeddings=None,
        **kwargs,
    ):
        # === Layers ===
        embedding = keras.layers.Embedding(
            vocabulary_size, embedding_dim, mask_zero=True, trainable=False, name="embedding"
        )

        # === Functional model ===
        ids = keras.Input(shape=(None,), dtype="int32", name="ids")
        x = embedding(ids)
        x = WordDropout(vocabulary_size, embedding_dropout, name="word_dropout")(x, ids)
        x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
        x = LockedDropout(input_dropout, name="input_dropout")(x)
        names = recurrent_layer_names(num_layers)
        for name in names:
            x = make_recurrent_layer(cell, units, name, use_cudnn, weight_dropout)(x)
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
            if name != names[-1]:
                x = LockedDropout(hidden_dropout, name=f"{name}_hidden_dropout")(x)
        kwargs.setdefault("name", "encoder")
        super().__init__(ids, x, **kwargs)
        if embeddings is not None:
            embedding.set_weights([np.asarray(embeddings, dtype="float32")])

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.cell = cell
        self.num_layers = num_layers
        self.units = units
        self.dropout = dropout
        self.weight_dropout = weight_dropout
        self.embedding_dropout = embedding_dropout
        self.input_dropout = input_dropout
        self.hidden_dropout = hidden_dropout
        self.use_cudnn = use_cudnn

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "embedding_dim": self.embedding_dim,
            "cell": self.cell,
            "num_layers": self.num_layers,
            "units": self.units,
            **{rate: getattr(self, rate) for rate in DROPOUT_RATES},
            "use_cudnn": self.use_cudnn,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **config):
        """The backbone of a preset (any run directory, or a shipped model's name), its weights loaded.

        Reads the preset's `config.json` and `model.weights.h5` (see `tftune.models.preset_files`).

        Args:
            preset: a preset folder or run directory, or a shipped model's name (`tftune pretrained list`).
            **config: config entries to change, e.g. dropout rates or `use_cudnn=False`.

        Example:

        ```python
        backbone = TextBackbone.from_preset("lstm-glove-general", use_cudnn=False)
        ```
        """
        from tftune.models.preset_files import load_backbone

        return load_backbone(preset, **config)

    @property
    def embedding(self):
        """The frozen `Embedding` layer (the word vectors)."""
        return self.get_layer("embedding")

    @property
    def recurrent_layers(self):
        """The recurrent layers, bottom first."""
        return [self.get_layer(name) for name in recurrent_layer_names(self.num_layers)]


def build_encoder(vectors, cell, layers, units, dropout=0.0, use_cudnn="auto", **rates):
    """A `TextBackbone` whose embedding holds `vectors` (`[vocabulary_size, embedding_dim]`).

    Args:
        vectors: the aligned pretrained vectors; row 0 is the padding token.
        cell, layers, units, dropout, use_cudnn: see `TextBackbone` (`layers` is `num_layers`).
        **rates: the other dropout rates of `TextBackbone`.

    Example:

    >>> import numpy as np
    >>> build_encoder(np.random.rand(100, 8).astype("float32"), "gru", 2, 16).name
    'encoder'
    """
    vocabulary_size, embedding_dim = np.shape(vectors)
    return TextBackbone(
        vocabulary_size, embedding_dim, cell, layers, units, dropout, use_cudnn=use_cudnn, embeddings=vectors, **rates
    )
