"""Recurrent layers that run faster on a CPU and keep Keras' weight layout.

`FastLSTM`, `FastGRU` and `FastSimpleRNN` are drop-in subclasses of the Keras layers: same
constructor, variables (`rnn_1/lstm_cell/kernel`, ...), config and `.weights.h5` layout. Only
`call` differs, and only where it is safe: like cuDNN, the fast path projects the inputs of all
time steps with one large matmul before the loop, so the loop itself holds just the recurrent
matmul and the gate math. Its backward pass (a custom gradient) runs the loop in reverse and
again leaves only `grad @ recurrent_kernel.T` inside; the gradient of the recurrent kernel
becomes one large matmul after the loop instead of one small matmul per step.

The fast path is taken on the TensorFlow backend when no cuDNN kernel can be used (no GPU
visible or `use_cudnn=False`; `FastSimpleRNN` has no cuDNN kernel at all), with Keras'
default activations (tanh, sigmoid), no dropout or recurrent dropout, not stateful, not
`go_backwards`, not `unroll`, and for GRU `reset_after=True`. Everything else, a GPU in
particular, goes to the Keras implementation, so cuDNN is still used where it exists.
The outputs follow Keras' formulas and masking exactly: a masked step keeps the previous
state and repeats the previous output.

When the number of time steps is known while the graph is traced (language-model batches of
`seq_len` tokens, or any fixed-shape input), each recurrence, forward and backward, is compiled
with XLA (`tf.function(jit_compile=True)`): it fuses the gate math of a step into a few kernels
and drops TensorFlow's per-op cost inside the loop. There the gates' sigmoid is computed as
`(1 + tanh(x / 2)) / 2`, since XLA's CPU sigmoid costs several times its tanh (an LSTM step's
gate math: 0.29 against 0.06 ms here). Inputs whose length varies from batch to batch
(length-bucketed classification batches, the exported model) run the same recurrence
uncompiled, since XLA would compile it again for every new length. `LanguageModel` compiles its
whole forward and backward pass the same way (see its `train_step`).

The classes report Keras' class names (`FastLSTM.__name__ == "LSTM"`): Keras names the
groups of a `.weights.h5` file after each layer's class name, so this keeps weight files
interchangeable with the plain layers in both directions.

The one argument the Keras layers lack, `weight_dropout`, is AWD-LSTM's weight drop (Merity et
al., 2017): in training, each call multiplies the recurrent (hidden-to-hidden) kernel by one
DropConnect mask, scaled by `1 / (1 - weight_dropout)`, so every sequence and every time step of
the batch uses the same dropped kernel. The dropped kernel goes into the recurrence in place of
the kernel, on the fast path and on Keras' (cuDNN included), and its gradient flows back through
the mask; neither path changes otherwise. It is off in inference, and a layer without it has
exactly Keras' config.

Example:

>>> import numpy as np
>>> from tftune.fast_rnn import FastLSTM
>>> layer = FastLSTM(8, return_sequences=True)
>>> x = np.random.rand(2, 5, 3).astype("float32")
>>> mask = np.array([[True] * 5, [True, True, False, False, False]])
>>> layer(x, mask=mask).shape
TensorShape([2, 5, 8])
"""

import keras
import tensorflow as tf
from keras import layers, ops

from tftune.keras_private import WeightDroppedInnerLoop
from tftune.recurrences import gru_recurrence, lstm_recurrence, simple_rnn_recurrence

TANH, SIGMOID = keras.activations.tanh, keras.activations.sigmoid


def _keep_keras_class_name(keras_class):
    """Gives the decorated class `keras_class`'s name, which Keras uses in `.weights.h5` paths."""

    def rename(cls):
        cls.__name__ = keras_class.__name__
        return cls

    return rename


def _gpu_visible():
    return bool(tf.config.list_logical_devices("GPU"))



class _FastRecurrentCall(WeightDroppedInnerLoop):
    """The shared fast `call` and weight drop; subclasses say when the fast path applies and run their recurrence."""

    def __init__(self, *args, weight_dropout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 <= weight_dropout < 1:
            raise ValueError(f"weight_dropout must be in [0, 1), got {weight_dropout}")
        if weight_dropout and (self.cell.dropout or self.cell.recurrent_dropout):
            # Keras' loop would draw their masks inside `inner_loop`'s StatelessScope, which drops seed updates.
            raise ValueError("weight_dropout cannot be combined with dropout or recurrent_dropout")
        self.weight_dropout = weight_dropout
        if weight_dropout:
            self.weight_dropout_seed_generator = keras.random.SeedGenerator(self.cell.seed)

    def recurrent_kernel_for_call(self, training=False):
        """The recurrent kernel of one call: in training with `weight_dropout`, one DropConnect mask for the batch."""
        kernel = self.cell.recurrent_kernel
        if not (training and self.weight_dropout):
            return kernel
        return keras.random.dropout(kernel, self.weight_dropout, seed=self.weight_dropout_seed_generator)

    def get_config(self):
        config = super().get_config()
        if self.weight_dropout:  # Without it, Keras' own config: plain Keras loads the layer.
            config["weight_dropout"] = self.weight_dropout
        return config

    @property
    def uses_fast_path(self):
        """Whether `call` takes the fast path with the current settings and devices."""
        cell = self.cell
        return (
            keras.backend.backend() == "tensorflow"
            and not (self.stateful or self.go_backwards or self.unroll)
            and not (cell.dropout or cell.recurrent_dropout)
        )

    def _cudnn_possible(self):
        """Whether Keras would (try to) use cuDNN: then the Keras implementation must run."""
        return self.use_cudnn is True or (self.use_cudnn == "auto" and _gpu_visible())

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if not self.uses_fast_path:
            return super().call(sequences, initial_state=initial_state, mask=mask, training=training)
        dtype = self.compute_dtype
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        batch = tf.shape(sequences)[0]
        if initial_state is None:
            states = [tf.zeros([batch, self.units], dtype) for _ in range(self._state_count)]
        else:
            given = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
            states = [tf.cast(state, dtype) for state in given]

        # Time-major before the projection: the input is narrower than the projection.
        time_major = tf.transpose(sequences, [1, 0, 2])
        kernel = ops.cast(self.cell.kernel, dtype)
        projected = tf.matmul(tf.reshape(time_major, [-1, kernel.shape[0]]), kernel)
        projected = tf.reshape(projected, tf.concat([tf.shape(time_major)[:2], [kernel.shape[1]]], axis=0))
        input_bias = self._input_bias()
        if input_bias is not None:
            projected = projected + ops.cast(input_bias, dtype)
        step_mask = None if mask is None else tf.transpose(tf.cast(mask, "bool"))[:, :, None]

        recurrent_kernel = ops.cast(self.recurrent_kernel_for_call(training), dtype)
        # A graph traced for a fixed number of steps: one XLA compilation. An eager call's steps
        # are known too, but the next call's may differ.
        compiled = sequences.shape[1] is not None and not tf.executing_eagerly()
        outputs, states = self._recurrence(projected, recurrent_kernel, states, step_mask, compiled)
        if step_mask is not None and initial_state is not None:
            # Keras outputs zeros, not the initial state, before a sequence's first real step.
            started = tf.cumsum(tf.cast(step_mask, "int32"), axis=0) > 0
            outputs = tf.where(started, outputs, tf.zeros_like(outputs))
        output = tf.transpose(outputs, [1, 0, 2]) if self.return_sequences else outputs[-1]
        if self.return_state:
            return output, *states
        return output


@_keep_keras_class_name(layers.LSTM)
@keras.saving.register_keras_serializable(package="tftune")
class FastLSTM(_FastRecurrentCall, layers.LSTM):
    """`keras.layers.LSTM` with a faster CPU implementation (see the module docstring).

    Takes the same arguments as `keras.layers.LSTM`, plus `weight_dropout` (see the module docstring).

    Example:

    >>> import numpy as np
    >>> FastLSTM(4)(np.zeros((2, 3, 5), "float32")).shape
    TensorShape([2, 4])
    """

    _state_count = 2

    @property
    def uses_fast_path(self):
        cell = self.cell
        return (
            super().uses_fast_path
            and not self._cudnn_possible()
            and cell.activation is TANH
            and cell.recurrent_activation is SIGMOID
        )

    def _input_bias(self):
        return self.cell.bias

    def _recurrence(self, projected, recurrent_kernel, states, mask, compiled):
        return lstm_recurrence(projected, recurrent_kernel, states[0], states[1], mask, compiled)


@_keep_keras_class_name(layers.GRU)
@keras.saving.register_keras_serializable(package="tftune")
class FastGRU(_FastRecurrentCall, layers.GRU):
    """`keras.layers.GRU` with a faster CPU implementation (see the module docstring).

    Takes the same arguments as `keras.layers.GRU`, plus `weight_dropout`; the fast path needs
    `reset_after=True` (the default).

    Example:

    >>> import numpy as np
    >>> FastGRU(4, return_sequences=True)(np.zeros((2, 3, 5), "float32")).shape
    TensorShape([2, 3, 4])
    """

    _state_count = 1

    @property
    def uses_fast_path(self):
        cell = self.cell
        return (
            super().uses_fast_path
            and not self._cudnn_possible()
            and cell.activation is TANH
            and cell.recurrent_activation is SIGMOID
            and cell.reset_after
        )

    def _input_bias(self):
        return None if self.cell.bias is None else self.cell.bias[0]

    def _recurrence(self, projected, recurrent_kernel, states, mask, compiled):
        bias = self.cell.bias
        dtype = recurrent_kernel.dtype
        recurrent_bias = tf.zeros([3 * self.units], dtype) if bias is None else ops.cast(bias[1], dtype)
        return gru_recurrence(projected, recurrent_kernel, recurrent_bias, states[0], mask, compiled)


@_keep_keras_class_name(layers.SimpleRNN)
@keras.saving.register_keras_serializable(package="tftune")
class FastSimpleRNN(_FastRecurrentCall, layers.SimpleRNN):
    """`keras.layers.SimpleRNN` with a faster CPU implementation (see the module docstring).

    Takes the same arguments as `keras.layers.SimpleRNN`, plus `weight_dropout`; the fast path needs
    `activation="tanh"` (the default). SimpleRNN has no cuDNN kernel, so the fast path is
    also taken on a GPU.

    Example:

    >>> import numpy as np
    >>> FastSimpleRNN(4)(np.zeros((2, 3, 5), "float32")).shape
    TensorShape([2, 4])
    """

    _state_count = 1

    @property
    def uses_fast_path(self):
        return super().uses_fast_path and self.cell.activation is TANH

    def _input_bias(self):
        return self.cell.bias

    def _recurrence(self, projected, recurrent_kernel, states, mask, compiled):
        return simple_rnn_recurrence(projected, recurrent_kernel, states[0], mask, compiled)
