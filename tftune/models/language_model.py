"""The language-model task: a backbone with a next-token head.

Example:

>>> import numpy as np
>>> from tftune.models import LanguageModel, TextBackbone
>>> backbone = TextBackbone(100, 8, "lstm", 1, 16)
>>> model = LanguageModel(backbone, output="tied")
>>> model(np.array([[5, 6, 7]])).shape
TensorShape([1, 3, 100])
>>> LanguageModel.from_config(model.get_config()).count_params() == model.count_params()
True
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from tftune.replicas import scale_loss_for_replicas
from tftune.models import DIRECTIONS, OUTPUTS
from tftune.models.backbone import deserialized, serialized
from tftune.models.task import Task
from tftune.regularization import LockedDropout, activation_regularization


@keras.saving.register_keras_serializable(package="tftune")
class TiedOutput(keras.layers.Layer):
    """Scores hidden states against a given matrix of word vectors, plus a trained bias per word.

    The matrix is passed in at call time (the backbone's frozen embedding), so this layer owns
    only the bias.

    Args:
        vocabulary_size: number of words (rows of the matrix).

    Example:

    >>> import numpy as np
    >>> vectors = np.eye(3, 2, dtype="float32")
    >>> TiedOutput(3)(np.array([[[2.0, 5.0]]], "float32"), vectors).numpy().tolist()
    [[[2.0, 5.0, 0.0]]]
    """

    def __init__(self, vocabulary_size, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.supports_masking = True

    def build(self, inputs_shape, vectors_shape=None):
        self.bias = self.add_weight(shape=(self.vocabulary_size,), initializer="zeros", name="bias")

    def call(self, inputs, vectors):
        return ops.matmul(inputs, ops.transpose(ops.cast(vectors, inputs.dtype))) + self.bias

    def compute_output_shape(self, inputs_shape, vectors_shape=None):
        return (*inputs_shape[:-1], self.vocabulary_size)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size}


@keras.saving.register_keras_serializable(package="tftune")
class LanguageModel(Task, keras.Model):
    """Backbone + next-token head that can train on a sampled softmax but always evaluates on the full one.

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
        - `"tied_sampled"`: the `"tied"` head trained on the sampled softmax. Nothing in its
          training step grows with the vocabulary but the bias (one float per word): the
          step's cost and the memory beyond the embedding stay flat from 20k words to 400k
          (`python -m bench.scaling`), where `"sampled"` trains a `units * vocab` kernel and
          its two Adam moments densely.

    Logits and losses are float32 under mixed precision too. The sampled loss ignores the
    padding mask: LM batches (`lm_dataset`) are never padded.

    AWD-LSTM's output dropout and activation penalties act in training only: the top layer's
    outputs go through `LockedDropout(output_dropout)` before the head, and the training step
    adds AR and TAR (`tftune.regularization.activation_regularization`) to the loss it
    differentiates. The `loss` it reports stays the cross-entropy alone, like every evaluation.

    Args:
        backbone: the `TextBackbone`; its weights are shared, not copied.
        output: `"full"`, `"sampled"`, `"tied"` or `"tied_sampled"`.
        num_sampled: candidates per training step for `"sampled"` and `"tied_sampled"` (at most
            the vocabulary size).
        unigram_counts: optional count of every id in the training corpus. The output bias then
            starts at the log unigram probabilities (add-one smoothed), so training starts from a
            unigram model instead of a uniform one. Needed with the sampled outputs: rare words are
            seldom sampled, so without it their logits stay high for long and the full-softmax
            perplexity lags far behind.
        output_dropout: locked dropout rate on the backbone's outputs, before the head.
        ar: weight of activation regularization (AR) in the training loss; 0 = none.
        tar: weight of temporal activation regularization (TAR) in the training loss; 0 = none.
        direction: the order in which it reads its text, `"forward"` or `"backward"` (its training
            corpus is reversed for it); a classifier on its backbone reads in the same order.
        preprocessor: the `TextPreprocessor` of the backbone's vocabulary, or None (ids only); with
            it, `predict` takes raw strings too (and returns logits for every token of each text).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import numpy as np
    >>> vectors = np.random.rand(100, 8).astype("float32")
    >>> from tftune.models import build_encoder
    >>> backbone = build_encoder(vectors, cell="lstm", layers=1, units=16)
    >>> model = LanguageModel(backbone, output="sampled", num_sampled=20)
    >>> model.compile(optimizer="adam")
    >>> ids = np.random.randint(3, 100, size=(4, 11)).astype("int32")
    >>> model.fit(ids[:, :-1], ids[:, 1:], verbose=0).history["loss"][0] > 0
    True
    >>> model(ids[:, :-1]).shape
    TensorShape([4, 10, 100])
    """

    def __init__(
        self,
        backbone,
        output="full",
        num_sampled=1024,
        unigram_counts=None,
        output_dropout=0.0,
        ar=0.0,
        tar=0.0,
        direction="forward",
        preprocessor=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "language_model")
        super().__init__(**kwargs)
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; expected one of {OUTPUTS}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
        embedding = backbone.get_layer("embedding")
        self.backbone = backbone
        self.direction = direction
        self.preprocessor = preprocessor
        self.output_kind = output
        self.tied = output in ("tied", "tied_sampled")
        self.sampled = output in ("sampled", "tied_sampled")
        self.output_dropout = LockedDropout(output_dropout, name="lm_output_dropout")
        self.ar, self.tar = ar, tar
        self.vocabulary_size = embedding.input_dim
        self.num_sampled = min(num_sampled, self.vocabulary_size)
        units = backbone.output.shape[-1]
        if self.tied:
            self.lm_projection = layers.Dense(embedding.output_dim, name="lm_projection")
            self.lm_projection.build((None, None, units))
            self.lm_head = TiedOutput(self.vocabulary_size, dtype="float32", name="lm_head")
            self.lm_head.build((None, None, embedding.output_dim))
        else:
            self.lm_projection = None
            self.lm_head = layers.Dense(self.vocabulary_size, dtype="float32", name="lm_head")
            self.lm_head.build((None, None, units))
        if unigram_counts is not None:
            counts = np.asarray(unigram_counts, dtype="float64") + 1.0
            self.lm_head.bias.assign(np.log(counts / counts.sum()).astype("float32"))
        self._cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        # The XLA-compiled training gradients and optimizer update, made on the first compiled step.
        self._compiled_gradients = self._compiled_update = None
        # Every layer with weights is built above: weights load before the first call.
        self.built = True

    # Its outputs are per token: the rows of one `predict` on texts are padded to one length.
    pads_predictions_to_one_length = True

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "output": self.output_kind,
            "num_sampled": self.num_sampled,
            "output_dropout": self.output_dropout.rate,
            "ar": self.ar,
            "tar": self.tar,
            "direction": self.direction,
            "preprocessor": serialized(self.preprocessor),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialized(deserialized(config, "backbone"), "preprocessor"))

    @classmethod
    def from_preset(cls, preset, **config):
        """The language model of a preset (a pretrain run, or a shipped model's name), its weights
        loaded, with its preprocessor (so it takes text).

        Args:
            preset: a preset folder or pretrain run directory, or a shipped model's name.
            **config: backbone config entries to change, e.g. dropout rates.

        Example:

        ```python
        model = LanguageModel.from_preset("lstm-glove-general")
        model.predict(["the film was"])  # next-token logits for each token
        ```
        """
        from tftune.models.preset_files import load_task

        return load_task(preset, expected=cls, **config)

    def _forward(self, ids, training):
        """The top layer's outputs, the same after output dropout, and the float32 vectors the head scores."""
        states = self.backbone(ids, training=training)
        dropped = self.output_dropout(states, training=training)
        hidden = dropped if self.lm_projection is None else self.lm_projection(dropped)
        return states, dropped, ops.cast(hidden, "float32")

    def hidden_states(self, ids, training=False):
        """The float32 vectors `[batch, time, d]` that the head scores against the output matrix."""
        return self._forward(ids, training)[-1]

    def _output_vectors(self):
        """The frozen word vectors a tied head scores against."""
        return self.backbone.get_layer("embedding").embeddings

    def _logits(self, hidden):
        if self.tied:
            return self.lm_head(hidden, self._output_vectors())
        return self.lm_head(hidden)

    def _output_columns(self, ids):
        """The output weight vectors of the words `ids` as columns, `[d, len(ids)]`, as the head scores them."""
        if self.tied:
            return ops.transpose(ops.cast(ops.take(self._output_vectors(), ids, axis=0), "float32"))
        return ops.take(self.lm_head.kernel, ids, axis=1)  # the kernel is [units, vocab]

    def call(self, ids, training=False):
        return self._logits(self.hidden_states(ids, training=training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Full-softmax cross-entropy per token, in float32 (Keras' default `train_step`/`test_step` use it)."""
        return self._cross_entropy(y, y_pred, sample_weight)

    def draw_candidates(self, targets):
        """The candidates of one sampled-softmax step, as `tf.nn.sampled_softmax_loss` draws them.

        `num_sampled` distinct ids from the log-uniform (Zipf) distribution, with the expected
        count of each true and each sampled id. Drawn outside the compiled step: the sampler has
        no XLA kernel.
        """
        labels = ops.reshape(ops.cast(targets, "int64"), (-1, 1))
        return tf.random.log_uniform_candidate_sampler(
            true_classes=labels, num_true=1, num_sampled=self.num_sampled, unique=True, range_max=self.vocabulary_size
        )

    def sampled_loss(self, hidden, targets, candidates=None):
        """Sampled-softmax cross-entropy per token, averaged: the training loss of `"sampled"` and `"tied_sampled"`.

        The arithmetic of `tf.nn.sampled_softmax_loss` (true and sampled logits corrected by
        the log of their expected counts, accidental hits removed), written in ops that XLA
        compiles.

        Args:
            hidden: the float32 vectors the head scores, `[batch, time, units]`.
            targets: the next-token ids, `[batch, time]`.
            candidates: `draw_candidates(targets)`; drawn here when not given.
        """
        sampled, true_expected, sampled_expected = (
            tf.stop_gradient(value) for value in (candidates or self.draw_candidates(targets))
        )
        features = ops.reshape(hidden, (-1, hidden.shape[-1]))
        labels = ops.reshape(ops.cast(targets, "int64"), (-1,))
        bias = self.lm_head.bias
        true_logits = (ops.sum(features * ops.transpose(self._output_columns(labels)), axis=1)
                       + ops.take(bias, labels) - ops.log(true_expected[:, 0]))
        sampled_logits = (ops.matmul(features, self._output_columns(sampled))
                          + ops.take(bias, sampled) - ops.log(sampled_expected))
        # A sampled id that is the true word scores as tf.nn does it: minus the largest float.
        hits = ops.equal(labels[:, None], sampled[None, :])
        sampled_logits = ops.where(hits, sampled_logits + np.finfo("float32").min, sampled_logits)
        logits = ops.concatenate([true_logits[:, None], sampled_logits], axis=1)
        return ops.mean(ops.logsumexp(logits, axis=1) - true_logits)

    def _training_gradients(self, x, y, candidates):
        """The step's reported loss, its full logits (None when sampled), and the gradients."""
        with tf.GradientTape() as tape:
            states, dropped, hidden = self._forward(x, training=True)
            if self.sampled:
                logits, loss = None, self.sampled_loss(hidden, y, candidates)
            else:
                logits = self._logits(hidden)
                loss = ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            objective = loss + activation_regularization(states, dropped, self.ar, self.tar)
            scaled_loss = self.optimizer.scale_loss(scale_loss_for_replicas(objective))
        return loss, logits, tape.gradient(scaled_loss, self.trainable_weights)

    def _update(self, gradients):
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))

    def compiles_training_step(self, x):
        """Whether the training step on batches shaped like `x` is compiled with XLA.

        It is when the number of steps is fixed (LM batches are `seq_len` long), so XLA
        compiles once, and every recurrent layer runs `tftune.fast_rnn`'s own ops: a cuDNN
        kernel (an LSTM or GRU on a GPU) has no XLA form.
        """
        return x.shape[1] is not None and all(layer.uses_fast_path for layer in self.backbone.recurrent_layers)

    def train_step(self, data):
        # Mirrors keras/src/backend/tensorflow/trainer.py, with the sampled loss where it applies
        # and AR/TAR added to what is differentiated, not to the reported loss: loss scaling for
        # mixed_float16 and the batch-weighted loss metric. The loss is this replica's mean:
        # divided by the replicas, their summed gradients are the global batch's (as Keras' own
        # losses do), so a strategy takes the one-device step. The forward and backward pass is
        # compiled with XLA where it can be (`compiles_training_step`): it fuses the gate math
        # and the head, about 1.2x faster on a CPU. So is the optimizer's update on one device
        # (Adam and the global norm clip fused into a few passes over the weights: 19 -> 10 ms
        # for the 2 x 256 LM at 20k words).
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("language-model training takes no sample weights")
        candidates = self.draw_candidates(y) if self.sampled else None
        gradients_of, update = self._training_gradients, self._update
        if self.compiles_training_step(x):
            if self._compiled_gradients is None:
                self._compiled_gradients = tf.function(self._training_gradients, jit_compile=True)
                self._compiled_update = tf.function(self._update, jit_compile=True)
            gradients_of = self._compiled_gradients
            # Under a tf.distribute strategy the update sums the replicas' gradients, which XLA cannot.
            update = update if tf.distribute.has_strategy() else self._compiled_update
        loss, logits, gradients = gradients_of(x, y, candidates)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(x)[0])
        update(gradients)
        if logits is None:
            return self.get_metrics_result()
        return self.compute_metrics(x, y, logits)


def build_language_model(backbone, output="full", num_sampled=1024, unigram_counts=None, **regularization):
    """Backbone + next-token head; see `LanguageModel` for the output kinds.

    Args:
        backbone: the model from `build_encoder`.
        output: one of `tftune.models.OUTPUTS` (`"full"`, `"sampled"`, `"tied"`, `"tied_sampled"`).
        num_sampled: candidates per training step for the sampled outputs.
        unigram_counts: optional count of every id in the training corpus, to start the
            output bias at the log unigram probabilities.
        **regularization: `output_dropout`, `ar` and `tar` (see `LanguageModel`).

    Returns:
        A `LanguageModel` whose call returns float32 logits `[batch, time, vocab]`.
    """
    model = LanguageModel(
        backbone, output=output, num_sampled=num_sampled, unigram_counts=unigram_counts, **regularization
    )
    model(np.zeros((1, 2), dtype="int32"))  # builds it, so weights can be saved or loaded before training
    return model


