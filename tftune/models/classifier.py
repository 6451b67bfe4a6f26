"""The classification task: a backbone under concat pooling and a small MLP head, and ensembles of them.

Example:

>>> import numpy as np
>>> from tftune.models import TextBackbone, TextClassifier
>>> classifier = TextClassifier(TextBackbone(100, 8, "gru", 2, 16), num_classes=3)
>>> classifier(np.array([[5, 6, 2, 0]])).shape
TensorShape([1, 3])
>>> TextClassifier.from_config(classifier.get_config()).count_params() == classifier.count_params()
True
"""

import keras
from keras import ops

from tftune.models import DIRECTIONS, HEADS
from tftune.models.backbone import deserialized, serialized
from tftune.models.task import ClassifierTask
from tftune.regularization import LockedDropout


@keras.saving.register_keras_serializable(package="tftune")
class ConcatPooling(keras.layers.Layer):
    """ULMFiT's concat pooling over the real (unmasked) time steps.

    Returns `[last hidden state, max over time, mean over time]`, concatenated, so the output
    is `3 * units` wide (or `units` with `mode="last"`). Padding never changes the result.

    Args:
        mode: `"concat_pool"` or `"last"`.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[1.0], [3.0], [0.0]]], "float32")
    >>> mask = np.array([[True, True, False]])
    >>> ConcatPooling()(x, mask=mask).numpy().tolist()
    [[3.0, 3.0, 2.0]]
    """

    def __init__(self, mode="concat_pool", **kwargs):
        super().__init__(**kwargs)
        if mode not in HEADS:
            raise ValueError(f"unknown pooling mode {mode!r}; expected one of {HEADS}")
        self.mode = mode
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], dtype="bool")
        real_steps = ops.sum(ops.cast(mask, "int32"), axis=1)
        # Right-padded sequences: the last real step sits at index length - 1.
        last_index = ops.maximum(real_steps - 1, 0)
        last = ops.take_along_axis(inputs, last_index[:, None, None], axis=1)[:, 0, :]
        if self.mode == "last":
            return last
        has_steps = (real_steps > 0)[:, None]
        step_mask = mask[:, :, None]
        masked = ops.where(step_mask, inputs, ops.full_like(inputs, float("-inf")))
        max_pool = ops.where(has_steps, ops.max(masked, axis=1), ops.zeros_like(last))
        weights = ops.cast(step_mask, inputs.dtype)
        total = ops.sum(inputs * weights, axis=1)
        count = ops.maximum(ops.sum(weights, axis=1), ops.cast(1, inputs.dtype))
        return ops.concatenate([last, max_pool, total / count], axis=-1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        width = input_shape[-1] if self.mode == "last" else 3 * input_shape[-1]
        return (input_shape[0], width)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tftune")
class ReverseTokens(keras.layers.Layer):
    """Reverses the real (non-padding) ids of each right-padded row; padding stays on the right.

    The input of a backward (right-to-left) encoder: `[t1, t2, <eos>, 0]` becomes
    `[<eos>, t2, t1, 0]`, the order in which the backward language model read its text.

    Example:

    >>> import numpy as np
    >>> ReverseTokens()(np.array([[5, 6, 2, 0], [7, 0, 0, 0]])).numpy().tolist()
    [[2, 6, 5, 0], [7, 0, 0, 0]]
    """

    def call(self, ids):
        lengths = ops.sum(ops.cast(ops.not_equal(ids, 0), "int32"), axis=1, keepdims=True)
        positions = ops.expand_dims(ops.arange(ops.shape(ids)[1], dtype="int32"), 0)
        source = ops.where(positions < lengths, lengths - 1 - positions, positions)
        return ops.take_along_axis(ids, source, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tftune")
class WordVectorFeatures(keras.layers.Layer):
    """The word vectors as pooling features: in the layer's compute dtype, without a mask of their own.

    Example:

    >>> import numpy as np
    >>> WordVectorFeatures()(np.ones((1, 2, 3), "float32")).shape
    TensorShape([1, 2, 3])
    """

    def call(self, vectors):
        return ops.cast(vectors, self.compute_dtype)

    def compute_mask(self, vectors, mask=None):
        return None


@keras.saving.register_keras_serializable(package="tftune")
class LogProbabilities(keras.layers.Layer):
    """`log(p)`: averaged probabilities turned back into logits (`softmax(log p) == p`)."""

    def call(self, probabilities):
        return ops.log(ops.maximum(probabilities, 1e-12))


@keras.saving.register_keras_serializable(package="tftune")
class TextClassifier(ClassifierTask, keras.Model):
    """Backbone + pooling + a small layer-normalised MLP; returns float32 logits `[batch, num_classes]`.

    ULMFiT's head (norm + dropout + linear, twice), with layer norm instead of batch norm:
    length-bucketed batches skew batch statistics, and layer norm has none. Its call takes token
    ids; with a `preprocessor`, `fit`, `evaluate` and `predict` take raw strings too, and
    `predict` returns class probabilities (see `tftune.models.task`).

    Args:
        backbone: the `TextBackbone` (its weights are shared, not copied).
        num_classes: number of labels.
        head: `"concat_pool"` ([last, max, mean]) or `"last"` (last real hidden state).
        head_units: width of the hidden layer of the head.
        head_dropout: dropout before each dense layer of the head.
        pool_embeddings: pool the (frozen) word vectors together with the top layer's states.
        direction: `"backward"` for a backbone pretrained right to left: the classifier
            still takes ids in reading order and reverses them itself (`ReverseTokens`).
        output_dropout: locked dropout rate on the backbone's outputs, before pooling (training only).
        preprocessor: the `TextPreprocessor` of the backbone's vocabulary, or None (ids only).
        **kwargs: passed to `keras.Model` (`name`, default `"classifier"`; members of an
            ensemble need different ones).

    Example:

    >>> import numpy as np
    >>> from tftune.models import TextBackbone
    >>> classifier = TextClassifier(TextBackbone(100, 8, "lstm", 1, 16), 2, head="last")
    >>> classifier.predict(np.array([[5, 6, 2]]), verbose=0).shape
    (1, 2)
    >>> from tftune.models import TextPreprocessor
    >>> vocabulary = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(97)]
    >>> classifier.preprocessor = TextPreprocessor(vocabulary, max_len=50)
    >>> classifier.predict(["w5 w6"], verbose=0).sum().round(4)
    1.0
    """

    def __init__(
        self,
        backbone,
        num_classes,
        head="concat_pool",
        head_units=50,
        head_dropout=0.3,
        pool_embeddings=True,
        direction="forward",
        output_dropout=0.0,
        preprocessor=None,
        **kwargs,
    ):
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")

        # === Functional model ===
        ids = keras.Input(shape=(None,), dtype="int32", name="ids")
        tokens = ReverseTokens(name="reverse_tokens")(ids) if direction == "backward" else ids
        hidden = LockedDropout(output_dropout, name="classifier_output_dropout")(backbone(tokens))
        if pool_embeddings:
            # The embedding layer is shared with the backbone: same frozen weights. The padding
            # mask is the backbone's; the vectors are cast when called, not when built, so that an
            # export traced in float32 (`tftune.export.portable_trace`) holds no float16 op.
            vectors = WordVectorFeatures(name="classifier_word_vectors")(backbone.get_layer("embedding")(tokens))
            hidden = keras.layers.Concatenate(name="classifier_features")([vectors, hidden])
        x = ConcatPooling(head, name="classifier_pooling")(hidden)
        x = keras.layers.LayerNormalization(name="classifier_norm_1")(x)
        x = keras.layers.Dropout(head_dropout, name="classifier_dropout_1")(x)
        x = keras.layers.Dense(head_units, activation="relu", name="classifier_hidden")(x)
        x = keras.layers.LayerNormalization(name="classifier_norm_2")(x)
        x = keras.layers.Dropout(head_dropout, name="classifier_dropout_2")(x)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="classifier_logits")(x)
        kwargs.setdefault("name", "classifier")
        super().__init__(ids, logits, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.num_classes = num_classes
        self.head = head
        self.head_units = head_units
        self.head_dropout = head_dropout
        self.pool_embeddings = pool_embeddings
        self.direction = direction
        self.output_dropout = output_dropout

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "head": self.head,
            "head_units": self.head_units,
            "head_dropout": self.head_dropout,
            "pool_embeddings": self.pool_embeddings,
            "direction": self.direction,
            "output_dropout": self.output_dropout,
            "preprocessor": serialized(self.preprocessor),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialized(deserialized(config, "backbone"), "preprocessor"))

    @classmethod
    def from_preset(cls, preset, num_classes, **config):
        """The classifier of a preset, or a new one on its backbone (ready to fine-tune).

        A preset that holds a `TextClassifier` of `num_classes` classes (a finetune run) gives it
        back trained. Any other (a language model: a pretrain run, a shipped model) gives a new
        head, untrained, on its pretrained backbone, reading in the language model's direction,
        with its preprocessor (so it takes text).

        Args:
            preset: a preset folder or run directory, or a shipped model's name (`tftune pretrained list`).
            num_classes: number of labels.
            **config: the new head's arguments (`head`, `head_units`, ...).

        Example:

        ```python
        classifier = TextClassifier.from_preset("lstm-glove-general", num_classes=6)
        ```
        """
        from tftune.models import preset_files

        held, saved = preset_files.task_class(preset), {}
        if held is not None:
            saved = preset_files.task_config(preset)
            if issubclass(held, cls) and saved["num_classes"] == num_classes and not config:
                return preset_files.load_task(preset, expected=cls)
        config.setdefault("direction", saved.get("direction", "forward"))
        config.setdefault("preprocessor", preset_files.load_preprocessor(preset))
        return cls(preset_files.load_backbone(preset), num_classes, **config)


@keras.saving.register_keras_serializable(package="tftune")
class ClassifierEnsemble(ClassifierTask, keras.Model):
    """Averages the class probabilities of several classifiers (e.g. forward + backward, as in ULMFiT).

    The output is the log of the mean probabilities, so it is used like any classifier's
    logits: its softmax is the mean, its argmax the ensemble's prediction. The members read the
    same ids, so the ensemble holds the one preprocessor (the first member's, unless given) and
    the members none.

    Args:
        members: `TextClassifier`s with different names.
        preprocessor: the `TextPreprocessor`; default: the first member's.
        **kwargs: passed to `keras.Model` (`name`, default `"ensemble"`).

    Example:

    >>> import numpy as np
    >>> from tftune.models import TextBackbone
    >>> members = [TextClassifier(TextBackbone(100, 8, "gru", 1, 8), 2, name=f"c{i}") for i in (1, 2)]
    >>> ClassifierEnsemble(members)(np.array([[5, 6]])).shape
    TensorShape([1, 2])
    """

    def __init__(self, members, preprocessor=None, **kwargs):
        ids = keras.Input(shape=(None,), dtype="int32", name="ids")
        probabilities = [
            keras.layers.Softmax(dtype="float32", name=f"{member.name}_probabilities")(member(ids))
            for member in members
        ]
        mean = keras.layers.Average(dtype="float32", name="ensemble_mean")(probabilities)
        kwargs.setdefault("name", "ensemble")
        super().__init__(ids, LogProbabilities(dtype="float32", name="ensemble_logits")(mean), **kwargs)
        self.members = list(members)
        self.preprocessor = preprocessor if preprocessor is not None else self.members[0].preprocessor
        for member in self.members:
            member.preprocessor = None

    @property
    def backbone(self):
        """The first member's backbone (each member has its own: `members[i].backbone`)."""
        return self.members[0].backbone

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "members": [keras.saving.serialize_keras_object(member) for member in self.members],
            "preprocessor": serialized(self.preprocessor),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialized(deserialized(config, "members"), "preprocessor"))


def ensemble_members(model):
    """The member classifiers of an ensemble, or `[model]` for a single classifier."""
    return list(model.members) if isinstance(model, ClassifierEnsemble) else [model]
