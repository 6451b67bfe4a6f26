"""The encoder (frozen embedding + recurrent stack), the language-model head and the classifier.

The encoder and the classifier are Keras functional models built from the recipe's `encoder`
section; the language model is a `LanguageModel` (a `keras.Model` subclass with its own training
step for the sampled softmax). Layer names are fixed (`embedding`, `rnn_1` ... `rnn_N` from the
bottom up, `lm_projection`, `lm_head`, `classifier_*`) so that weights move between the
language model, the classifier and the export by name.

Example:

>>> import numpy as np
>>> from tftune.models import build_encoder, build_classifier
>>> vectors = np.random.rand(100, 8).astype("float32")
>>> encoder = build_encoder(vectors, cell="gru", layers=2, units=16)
>>> classifier = build_classifier(encoder, n_classes=3)
>>> classifier(np.array([[5, 6, 2, 0]])).shape
TensorShape([1, 3])
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from tftune.distribute import scale_loss_for_replicas
from tftune.fast_rnn import FastGRU, FastLSTM, FastSimpleRNN
from tftune.regularization import LockedDropout, WordDropout, activation_regularization

CELLS = {"simple_rnn": FastSimpleRNN, "lstm": FastLSTM, "gru": FastGRU}


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
        model = build_encoder(...)
    ```
    """
    previous = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


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
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)}")
    options = {"units": units, "return_sequences": True, "name": name, "weight_dropout": weight_dropout}
    if cell == "gru":
        options["reset_after"] = True
    if cell != "simple_rnn":
        options["use_cudnn"] = use_cudnn
    return CELLS[cell](**options)


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


def build_encoder(
    vectors,
    cell,
    layers,
    units,
    dropout=0.0,
    use_cudnn="auto",
    weight_dropout=0.0,
    embedding_dropout=0.0,
    input_dropout=0.0,
    hidden_dropout=0.0,
):
    """The shared encoder: frozen embedding, then `layers` recurrent layers.

    The AWD-LSTM rates (`weight_dropout` ... `hidden_dropout`) act in training only and add no
    weights: the layers' names and weight files are the same whatever the rates.

    Args:
        vectors: float array `[vocab_size, dim]`, the aligned pretrained vectors. Row 0 is the
            padding token (id 0 is masked).
        cell: `"simple_rnn"`, `"lstm"` or `"gru"`.
        layers: number of stacked recurrent layers.
        units: units per recurrent layer.
        dropout: dropout rate after the embedding and after each recurrent layer.
        use_cudnn: passed to LSTM/GRU (`"auto"` for training, `False` for export).
        weight_dropout: DropConnect rate on every layer's recurrent kernel, one mask per batch.
        embedding_dropout: share of the vocabulary whose vectors are zeroed for a batch
            (`WordDropout`).
        input_dropout: locked dropout rate on the first recurrent layer's input (`LockedDropout`).
        hidden_dropout: locked dropout rate between recurrent layers.

    Returns:
        A `keras.Model` named `encoder` mapping int ids `[batch, time]` to hidden states
        `[batch, time, units]`, with the padding mask attached.
    """
    vocab_size, dim = vectors.shape
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    embedding = keras.layers.Embedding(
        vocab_size, dim, mask_zero=True, trainable=False, name="embedding"
    )
    x = embedding(ids)
    embedding.set_weights([vectors])
    x = WordDropout(vocab_size, embedding_dropout, name="word_dropout")(x, ids)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    x = LockedDropout(input_dropout, name="input_dropout")(x)
    names = recurrent_layer_names(layers)
    for name in names:
        x = make_recurrent_layer(cell, units, name, use_cudnn, weight_dropout)(x)
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
        if name != names[-1]:
            x = LockedDropout(hidden_dropout, name=f"{name}_hidden_dropout")(x)
    return keras.Model(ids, x, name="encoder")


OUTPUTS = ("full", "sampled", "tied")


@keras.saving.register_keras_serializable(package="tftune")
class TiedOutput(keras.layers.Layer):
    """Scores hidden states against a given matrix of word vectors, plus a trained bias per word.

    The matrix is passed in at call time (the encoder's frozen embedding), so this layer owns
    only the bias.

    Args:
        vocab_size: number of words (rows of the matrix).

    Example:

    >>> import numpy as np
    >>> vectors = np.eye(3, 2, dtype="float32")
    >>> TiedOutput(3)(np.array([[[2.0, 5.0]]], "float32"), vectors).numpy().tolist()
    [[[2.0, 5.0, 0.0]]]
    """

    def __init__(self, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.supports_masking = True

    def build(self, inputs_shape, vectors_shape=None):
        self.bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="bias")

    def call(self, inputs, vectors):
        return ops.matmul(inputs, ops.transpose(ops.cast(vectors, inputs.dtype))) + self.bias

    def compute_output_shape(self, inputs_shape, vectors_shape=None):
        return (*inputs_shape[:-1], self.vocab_size)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}


class LanguageModel(keras.Model):
    """Encoder + next-token head that can train on a sampled softmax but always evaluates on the full one.

    `call` returns float32 logits over the whole vocabulary, and the model's own loss is the
    full-softmax cross-entropy, so `evaluate`, `validation_data` and perplexity are exact
    for every output kind. Compile with an optimizer only.

    Output kinds:
        - `"full"`: `Dense(vocab)` head (`lm_head`), full softmax in training.
        - `"sampled"`: the same `lm_head`; training scores the true word and `num_sampled`
          candidates drawn from a log-uniform (Zipf) distribution, which fits a vocabulary
          sorted by frequency (`tf.nn.sampled_softmax_loss`). Metrics compiled with the
          model are only updated in evaluation, as training produces no full logits.
        - `"tied"`: `Dense(dim)` (`lm_projection`) maps the top layer's states to the
          embedding space, and `lm_head` scores them against the frozen embedding matrix
          plus a trained bias: a full softmax that trains `units * dim` weights instead of
          `units * vocab`.

    Logits and losses are float32 under mixed precision too. The sampled loss ignores the
    padding mask: LM batches (`lm_dataset`) are never padded.

    AWD-LSTM's output dropout and activation penalties act in training only: the top layer's
    outputs go through `LockedDropout(output_dropout)` before the head, and the training step
    adds AR and TAR (`tftune.regularization.activation_regularization`) to the loss it
    differentiates. The `loss` it reports stays the cross-entropy alone, like every evaluation.

    Args:
        encoder: the model from `build_encoder`; its weights are shared, not copied.
        output: `"full"`, `"sampled"` or `"tied"`.
        num_sampled: candidates per training step for `"sampled"` (at most the vocabulary size).
        unigram_counts: optional count of every id in the training corpus. The output bias then
            starts at the log unigram probabilities (add-one smoothed), so training starts from a
            unigram model instead of a uniform one. Needed with `"sampled"`: rare words are
            seldom sampled, so without it their logits stay high for long and the full-softmax
            perplexity lags far behind.
        output_dropout: locked dropout rate on the encoder's outputs, before the head.
        ar: weight of activation regularization (AR) in the training loss; 0 = none.
        tar: weight of temporal activation regularization (TAR) in the training loss; 0 = none.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import numpy as np
    >>> vectors = np.random.rand(100, 8).astype("float32")
    >>> encoder = build_encoder(vectors, cell="lstm", layers=1, units=16)
    >>> model = LanguageModel(encoder, output="sampled", num_sampled=20)
    >>> model.compile(optimizer="adam")
    >>> ids = np.random.randint(3, 100, size=(4, 11)).astype("int32")
    >>> model.fit(ids[:, :-1], ids[:, 1:], verbose=0).history["loss"][0] > 0
    True
    >>> model(ids[:, :-1]).shape
    TensorShape([4, 10, 100])
    """

    def __init__(
        self,
        encoder,
        output="full",
        num_sampled=1024,
        unigram_counts=None,
        output_dropout=0.0,
        ar=0.0,
        tar=0.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "language_model")
        super().__init__(**kwargs)
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; expected one of {OUTPUTS}")
        embedding = encoder.get_layer("embedding")
        self.encoder = encoder
        self.output_kind = output
        self.output_dropout = LockedDropout(output_dropout, name="lm_output_dropout")
        self.ar, self.tar = ar, tar
        self.vocab_size = embedding.input_dim
        self.num_sampled = min(num_sampled, self.vocab_size)
        units = encoder.output.shape[-1]
        if output == "tied":
            self.lm_projection = layers.Dense(embedding.output_dim, name="lm_projection")
            self.lm_projection.build((None, None, units))
            self.lm_head = TiedOutput(self.vocab_size, dtype="float32", name="lm_head")
            self.lm_head.build((None, None, embedding.output_dim))
        else:
            self.lm_projection = None
            self.lm_head = layers.Dense(self.vocab_size, dtype="float32", name="lm_head")
            self.lm_head.build((None, None, units))
        if unigram_counts is not None:
            counts = np.asarray(unigram_counts, dtype="float64") + 1.0
            self.lm_head.bias.assign(np.log(counts / counts.sum()).astype("float32"))
        self._cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def _forward(self, ids, training):
        """The top layer's outputs, the same after output dropout, and the float32 vectors the head scores."""
        states = self.encoder(ids, training=training)
        dropped = self.output_dropout(states, training=training)
        hidden = dropped if self.lm_projection is None else self.lm_projection(dropped)
        return states, dropped, ops.cast(hidden, "float32")

    def hidden_states(self, ids, training=False):
        """The float32 vectors `[batch, time, d]` that the head scores against the output matrix."""
        return self._forward(ids, training)[-1]

    def _logits(self, hidden):
        if self.output_kind == "tied":
            return self.lm_head(hidden, self.encoder.get_layer("embedding").embeddings)
        return self.lm_head(hidden)

    def call(self, ids, training=False):
        return self._logits(self.hidden_states(ids, training=training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Full-softmax cross-entropy per token, in float32 (Keras' default `train_step`/`test_step` use it)."""
        return self._cross_entropy(y, y_pred, sample_weight)

    def sampled_loss(self, hidden, targets):
        """Sampled-softmax cross-entropy per token, averaged: the training loss of `"sampled"`."""
        features = ops.reshape(hidden, (-1, hidden.shape[-1]))
        labels = ops.reshape(ops.cast(targets, "int64"), (-1, 1))
        losses = tf.nn.sampled_softmax_loss(
            weights=ops.transpose(self.lm_head.kernel),
            biases=self.lm_head.bias,
            labels=labels,
            inputs=features,
            num_sampled=self.num_sampled,
            num_classes=self.vocab_size,
            remove_accidental_hits=True,
        )
        return ops.mean(losses)

    def train_step(self, data):
        # Mirrors keras/src/backend/tensorflow/trainer.py, with the sampled loss where it applies
        # and AR/TAR added to what is differentiated, not to the reported loss: loss scaling for
        # mixed_float16 and the batch-weighted loss metric. The loss is this replica's mean:
        # divided by the replicas, their summed gradients are the global batch's (as Keras' own
        # losses do), so a strategy takes the one-device step.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("language-model training takes no sample weights")
        with tf.GradientTape() as tape:
            states, dropped, hidden = self._forward(x, training=True)
            if self.output_kind == "sampled":
                logits, loss = None, self.sampled_loss(hidden, y)
            else:
                logits = self._logits(hidden)
                loss = ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            objective = loss + activation_regularization(states, dropped, self.ar, self.tar)
            scaled_loss = self.optimizer.scale_loss(scale_loss_for_replicas(objective))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(x)[0])
        gradients = tape.gradient(scaled_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        if logits is None:
            return self.get_metrics_result()
        return self.compute_metrics(x, y, logits)


def build_language_model(encoder, output="full", num_sampled=1024, unigram_counts=None, **regularization):
    """Encoder + next-token head; see `LanguageModel` for the output kinds.

    Args:
        encoder: the model from `build_encoder`.
        output: `"full"`, `"sampled"` or `"tied"`.
        num_sampled: candidates per training step for `"sampled"`.
        unigram_counts: optional count of every id in the training corpus, to start the
            output bias at the log unigram probabilities.
        **regularization: `output_dropout`, `ar` and `tar` (see `LanguageModel`).

    Returns:
        A `LanguageModel` whose call returns float32 logits `[batch, time, vocab]`.
    """
    model = LanguageModel(
        encoder, output=output, num_sampled=num_sampled, unigram_counts=unigram_counts, **regularization
    )
    model(np.zeros((1, 2), dtype="int32"))  # builds it, so weights can be saved or loaded before training
    return model


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
        if mode not in ("concat_pool", "last"):
            raise ValueError(f"unknown pooling mode {mode!r}")
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
class LogProbabilities(keras.layers.Layer):
    """`log(p)`: averaged probabilities turned back into logits (`softmax(log p) == p`)."""

    def call(self, probabilities):
        return ops.log(ops.maximum(probabilities, 1e-12))


DIRECTIONS = ("forward", "backward")


def build_classifier(
    encoder,
    n_classes,
    head="concat_pool",
    head_units=50,
    head_dropout=0.3,
    pool_embeddings=True,
    direction="forward",
    name="classifier",
    output_dropout=0.0,
):
    """Encoder + pooling + a small layer-normalised MLP; returns float32 logits `[batch, n_classes]`.

    Args:
        encoder: the model from `build_encoder` (its weights are shared, not copied).
        n_classes: number of labels.
        head: `"concat_pool"` ([last, max, mean]) or `"last"` (last real hidden state).
        head_units: width of the hidden layer of the head.
        head_dropout: dropout before each dense layer of the head.
        pool_embeddings: pool the (frozen) word vectors together with the top layer's states.
        direction: `"backward"` for an encoder pretrained right to left: the classifier
            still takes ids in reading order and reverses them itself (`ReverseTokens`).
        name: the model's name (members of an ensemble need different ones).
        output_dropout: locked dropout rate on the encoder's outputs, before pooling (training only).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    tokens = ReverseTokens(name="reverse_tokens")(ids) if direction == "backward" else ids
    hidden = LockedDropout(output_dropout, name="classifier_output_dropout")(encoder(tokens))
    if pool_embeddings:
        # The embedding layer is shared with the encoder: same frozen weights, same mask.
        vectors = encoder.get_layer("embedding")(tokens)
        hidden = keras.layers.Concatenate(name="classifier_features")([keras.ops.cast(vectors, hidden.dtype), hidden])
    x = ConcatPooling(head, name="classifier_pooling")(hidden)
    # ULMFiT's head (norm + dropout + linear, twice), with layer norm instead of batch norm:
    # length-bucketed batches skew batch statistics, and layer norm has none.
    x = keras.layers.LayerNormalization(name="classifier_norm_1")(x)
    x = keras.layers.Dropout(head_dropout, name="classifier_dropout_1")(x)
    x = keras.layers.Dense(head_units, activation="relu", name="classifier_hidden")(x)
    x = keras.layers.LayerNormalization(name="classifier_norm_2")(x)
    x = keras.layers.Dropout(head_dropout, name="classifier_dropout_2")(x)
    logits = keras.layers.Dense(n_classes, dtype="float32", name="classifier_logits")(x)
    return keras.Model(ids, logits, name=name)


def build_ensemble(members):
    """Averages the class probabilities of several classifiers (e.g. forward + backward, as in ULMFiT).

    The output is the log of the mean probabilities, so it is used like any classifier's
    logits: its softmax is the mean, its argmax the ensemble's prediction.

    Args:
        members: classifiers from `build_classifier`, with different names.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    probabilities = [keras.layers.Softmax(dtype="float32", name=f"{member.name}_probabilities")(member(ids))
                     for member in members]
    mean = keras.layers.Average(dtype="float32", name="ensemble_mean")(probabilities)
    return keras.Model(ids, LogProbabilities(dtype="float32", name="ensemble_logits")(mean), name="ensemble")


def ensemble_members(model):
    """The member classifiers of an ensemble, or `[model]` for a single classifier."""
    if not any(layer.name == "ensemble_mean" for layer in model.layers):
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
