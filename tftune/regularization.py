"""AWD-LSTM's regularization outside the recurrent layers (Merity et al., 2017, as in ULMFiT).

- `LockedDropout`: variational dropout, one mask per sequence for every time step (on the
  recurrent stack's input, between its layers and on its output).
- `WordDropout`: drops whole words of the vocabulary for a batch (embedding dropout).
- `activation_regularization`: AR and TAR, the penalties on the top layer's activations that
  the language model adds to its training loss.

Weight drop (DropConnect on the recurrent kernels) lives in the recurrent layers themselves
(`tftune.fast_rnn`, `weight_dropout`). Every piece is active in training only: in inference the
layers pass their inputs through, so an exported model holds no random op of theirs. None of
them has weights, so weight files do not change.

Example:

>>> import numpy as np
>>> from tftune.regularization import LockedDropout
>>> x = np.ones((2, 5, 3), "float32")
>>> y = LockedDropout(0.5, seed=1)(x, training=True).numpy()
>>> bool((y == y[:, :1]).all())  # every step of a sequence has the same mask
True
"""

import keras
from keras import ops


def _check_rate(rate):
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    return rate


@keras.saving.register_keras_serializable(package="tftune")
class LockedDropout(keras.layers.Layer):
    """Locked (variational) dropout over `[batch, time, features]`: one mask per sequence, the same at every step.

    In training, each sequence drops the same features at every time step (a mask of shape
    `[batch, 1, features]`, drawn anew each call) and scales the kept ones by `1 / (1 - rate)`.
    A mask that changed every step would disturb a recurrent layer's input at each step; one
    per sequence regularizes without that noise (Gal & Ghahramani, 2016). In inference the
    layer passes its input through. It keeps its input's padding mask and has no weights.

    Args:
        rate: share of features to drop, in [0, 1).
        seed: optional int seed of the masks.
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).

    Example:

    >>> import numpy as np
    >>> x = np.ones((4, 3, 2), "float32")
    >>> y = LockedDropout(0.5, seed=0)(x, training=True).numpy()
    >>> bool(((y == 0) | (y == 2)).all() and (y == y[:, :1]).all())
    True
    >>> LockedDropout(0.5)(x).numpy().tolist() == x.tolist()  # inference
    True
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(rate)
        self.seed = seed
        self.supports_masking = True
        if rate:
            self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not (training and self.rate):
            return inputs
        shape = ops.shape(inputs)
        return keras.random.dropout(inputs, self.rate, noise_shape=(shape[0], 1, shape[2]), seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tftune")
class WordDropout(keras.layers.Layer):
    """Word (embedding) dropout: drops whole words of the vocabulary for a batch.

    In training, each word of the vocabulary is dropped with probability `rate` for the whole
    call (a `[vocabulary_size]` mask, gathered by the ids): a dropped word's vector is zero wherever
    it occurs in the batch, and the kept vectors are scaled by `1 / (1 - rate)`. The embedding
    matrix itself is not touched (it may stay frozen). In inference the layer passes the vectors
    through. It keeps the vectors' padding mask and has no weights.

    Args:
        vocabulary_size: number of ids (rows of the embedding).
        rate: share of the vocabulary to drop, in [0, 1).
        seed: optional int seed of the masks.
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).

    Call arguments:
        vectors: the embedded ids, `[batch, time, dim]`.
        ids: the ids they were looked up from, `[batch, time]`.

    Example:

    >>> import numpy as np
    >>> ids = np.array([[1, 2, 1, 3]])
    >>> vectors = np.ones((1, 4, 2), "float32")
    >>> y = WordDropout(4, 0.5, seed=0)(vectors, ids, training=True).numpy()
    >>> bool((y[0, 0] == y[0, 2]).all())  # both 1s are kept, or both dropped
    True
    """

    def __init__(self, vocabulary_size, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.rate = _check_rate(rate)
        self.seed = seed
        self.supports_masking = True
        if rate:
            self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, vectors, ids, training=False):
        if not (training and self.rate):
            return vectors
        kept = keras.random.dropout(ops.ones((self.vocabulary_size,), vectors.dtype), self.rate, seed=self.seed_generator)
        return vectors * ops.expand_dims(ops.take(kept, ids), -1)

    def compute_output_shape(self, vectors_shape, ids_shape=None):
        return vectors_shape

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "rate": self.rate, "seed": self.seed}


def activation_regularization(states, dropped_states, ar=0.0, tar=0.0):
    """AR + TAR of AWD-LSTM on the top layer's `[batch, time, units]` outputs, in float32.

    `ar * mean(dropped_states ** 2) + tar * mean((states[:, t] - states[:, t - 1]) ** 2)`:
    activation regularization keeps the outputs small, on the outputs the head sees (after
    output dropout); temporal activation regularization keeps them from jumping between steps,
    on the outputs before dropout, whose masks would otherwise count as jumps.

    Args:
        states: the top layer's outputs before output dropout.
        dropped_states: the same after output dropout.
        ar: AR's weight (alpha); 0 = none.
        tar: TAR's weight (beta); 0 = none.

    Returns:
        A float32 scalar, or `0.0` when both weights are 0.

    Example:

    >>> import numpy as np
    >>> states = np.array([[[1.0], [3.0]]], "float32")
    >>> float(activation_regularization(states, states, ar=1.0, tar=0.5))  # (1 + 9) / 2 + 0.5 * 4
    7.0
    """
    penalty = 0.0
    if ar:
        penalty += ar * ops.mean(ops.square(ops.cast(dropped_states, "float32")))
    if tar:
        states = ops.cast(states, "float32")
        penalty += tar * ops.mean(ops.square(states[:, 1:] - states[:, :-1]))
    return penalty
