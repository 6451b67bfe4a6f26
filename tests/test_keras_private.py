"""Each private Keras API in `tftune.keras_private` still works as tftune relies on it.

A Keras upgrade that renames or reorders one of these hooks fails here, by name.
"""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftune import keras_private


def test_optimizer_variable_index_is_the_slot_update_step_sees():
    """Discriminative rates look a variable's multiplier up by this index inside `update_step`."""
    seen = []

    class Recording(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            seen.append(keras_private.optimizer_variable_index(self, variable))
            super().update_step(gradient, variable, learning_rate)

    first, second = keras.Variable(np.ones(2, "float32")), keras.Variable(np.ones(3, "float32"))
    optimizer = Recording(learning_rate=0.1)
    optimizer.build([first, second])
    optimizer.apply_gradients([(tf.ones(3), second), (tf.ones(2), first)])
    assert sorted(seen) == [0, 1] and seen == [1, 0]


def test_keras_clips_before_it_sums_the_replicas_through_the_overridden_hooks():
    """`ClipAfterAllReduce` swaps the order of these two hooks: both must still run, clipping first."""
    calls = []

    class Recording(keras_private.ClipAfterAllReduce, keras.optimizers.SGD):
        def _clip_gradients(self, grads):
            calls.append("clip")
            return super()._clip_gradients(grads)

        def _all_reduce_sum_gradients(self, grads_and_vars):
            calls.append("sum")
            return super()._all_reduce_sum_gradients(grads_and_vars)

    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = Recording(learning_rate=1.0, global_clipnorm=1.0)
    optimizer.apply_gradients([(tf.constant([3.0, 4.0]), variable)])
    assert calls == ["clip", "sum"]
    # Outside a strategy the mixin changes nothing: the step is Keras' clipped one.
    np.testing.assert_allclose(variable.numpy(), [-0.6, -0.8], rtol=1e-6)


def test_symbolic_build_builds_model_metrics_and_optimizer_without_drawing_a_batch():
    model = keras.Sequential([keras.layers.Embedding(10, 4), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    drawn = []
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 5), "int32"), np.zeros(4, "int32"))).batch(2)
    dataset = dataset.map(lambda x, y: (tf.py_function(lambda t: drawn.append(1) or t, [x], tf.int32), y))
    dataset = dataset.map(lambda x, y: (tf.ensure_shape(x, [None, 5]), y))
    keras_private.symbolic_build(model, dataset.element_spec)
    assert model.built and model.optimizer.built and all(layer.built for layer in model.layers)
    assert [metric.name for metric in model.metrics] == ["loss", "compile_metrics"]
    assert drawn == []


def test_keras_still_runs_its_recurrence_and_cudnn_through_inner_loop():
    """`WeightDroppedInnerLoop` overrides this hook: LSTM and GRU must still call it from `call`,
    with this signature, and hand cuDNN the cell's recurrent kernel variable (read in the scope)."""
    for keras_class, backend_call in ((keras.layers.LSTM, "backend.lstm("), (keras.layers.GRU, "backend.gru(")):
        assert list(inspect.signature(keras_class.inner_loop).parameters) == [
            "self", "sequences", "initial_state", "mask", "training"
        ]
        source = inspect.getsource(keras_class.inner_loop)
        assert backend_call in source and "recurrent_kernel=self.cell.recurrent_kernel" in source
    assert "self.inner_loop(" in inspect.getsource(keras.layers.RNN.call)


def test_weight_dropped_inner_loop_hands_keras_the_kernel_of_the_call():
    class ZeroKernelInTraining(keras_private.WeightDroppedInnerLoop, keras.layers.GRU):
        def recurrent_kernel_for_call(self, training=False):
            kernel = self.cell.recurrent_kernel
            return keras.ops.zeros_like(kernel) if training else kernel

    inputs = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    layer = ZeroKernelInTraining(4, use_cudnn=False, seed=1)
    plain = keras.layers.GRU(4, use_cudnn=False)
    plain.build(inputs.shape)
    layer.build(inputs.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(inputs, training=False), plain(inputs), atol=1e-6)
    plain.cell.recurrent_kernel.assign(np.zeros_like(plain.cell.recurrent_kernel.numpy()))
    np.testing.assert_allclose(layer(inputs, training=True), plain(inputs), atol=1e-6)
    assert not np.allclose(layer(inputs, training=True), layer(inputs, training=False))


def test_weights_saved_skipping_the_inner_model_leave_it_out_and_load_back_around_it(tmp_path):
    """A preset's `task.weights.h5`: the task's weights without its backbone's, loaded around a loaded backbone."""
    inner = keras.Sequential([keras.layers.Dense(3, name="inner_dense")], name="inner")
    inputs = keras.Input((2,))
    outer = keras.Model(inputs, keras.layers.Dense(1, name="head")(inner(inputs)))
    path = tmp_path / "task.weights.h5"
    keras_private.save_weights_skipping(outer, path, skip=[inner])
    fresh_inner = keras.Sequential([keras.layers.Dense(3, name="inner_dense")], name="inner")
    fresh = keras.Model(inputs := keras.Input((2,)), keras.layers.Dense(1, name="head")(fresh_inner(inputs)))
    kept = [weight.numpy() for weight in fresh_inner.weights]
    keras_private.load_weights_skipping(fresh, path, skip=[fresh_inner])
    for saved, loaded in zip(outer.get_layer("head").weights, fresh.get_layer("head").weights, strict=True):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    for before, after in zip(kept, fresh_inner.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())  # left as it was, not read from the file
    with pytest.raises(ValueError):  # the file holds no backbone: loading everything fails
        fresh.load_weights(path)
