"""The fast recurrent layers match the Keras layers they replace: values, gradients, files, configs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftune import recurrences
from tftune.fast_rnn import FastGRU, FastLSTM, FastSimpleRNN

PAIRS = {
    "lstm": (FastLSTM, keras.layers.LSTM),
    "gru": (FastGRU, keras.layers.GRU),
    "simple_rnn": (FastSimpleRNN, keras.layers.SimpleRNN),
}
BATCH, TIME, DIM, UNITS = 4, 7, 3, 5
# Right-padded rows of every length, including a fully padded one.
MASK = np.arange(TIME)[None, :] < np.array([TIME, 4, 1, 0])[:, None]


def twin_layers(cell, weight_dropout=0.0, **options):
    """A fast layer (with `weight_dropout`) and a Keras layer with the same, non-trivial weights."""
    fast_class, keras_class = PAIRS[cell]
    fast, plain = fast_class(UNITS, weight_dropout=weight_dropout, **options), keras_class(UNITS, **options)
    fast.build((BATCH, TIME, DIM))
    plain.build((BATCH, TIME, DIM))
    rng = np.random.default_rng(1)
    # Random biases too, so that every bias (GRU has two) affects the result.
    weights = [0.5 * rng.normal(size=w.shape).astype("float32") for w in plain.get_weights()]
    fast.set_weights(weights)
    plain.set_weights(weights)
    return fast, plain


def fixed_weights(tensor):
    """Deterministic, varied weights shaped like `tensor`, so no gradient is trivially symmetric."""
    return tf.sin(tf.reshape(tf.range(tf.size(tensor), dtype="float32"), tf.shape(tensor)))


def values_and_gradients(layer, inputs, mask, initial_state=None, training=False, fixed_length=True):
    """Outputs, and gradients of a fixed projection of all outputs w.r.t. inputs, weights and states.

    Traced with the inputs' shape (`fixed_length`: the XLA-compiled recurrence), or with any
    number of steps (the uncompiled one).
    """
    signature = None if fixed_length else [tf.TensorSpec([BATCH, None, inputs.shape[-1]], inputs.dtype)]

    @tf.function(input_signature=signature)
    def run(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            tape.watch(initial_state or [])
            outputs = layer(inputs, mask=mask, initial_state=initial_state, training=training)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            loss = sum(tf.reduce_sum(tf.cast(o, "float32") * fixed_weights(o)) for o in outputs)
        sources = [inputs] + layer.trainable_variables + list(initial_state or [])
        return outputs, tape.gradient(loss, sources)

    outputs, gradients = run(tf.constant(inputs))
    return [np.asarray(o, "float32") for o in outputs], [np.asarray(g, "float32") for g in gradients]


def assert_all_close(actual, expected, tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance)


def uses_custom_gradient(layer, inputs):
    """Whether the traced layer contains the fast path's custom-gradient op (in its graph or a function it calls)."""
    graph_def = tf.function(layer).get_concrete_function(tf.constant(inputs)).graph.as_graph_def()
    nodes = [*graph_def.node, *(node for function in graph_def.library.function for node in function.node_def)]
    return any("_gradient_op_type" in node.attr for node in nodes)


@pytest.fixture
def inputs():
    return np.random.default_rng(0).normal(size=(BATCH, TIME, DIM)).astype("float32")


# The last output of a padded row is the one of its last real step, hence "last" with a mask.
@pytest.mark.parametrize(
    "return_sequences, masked", [(True, False), (True, True), (False, True)], ids=["sequences", "masked", "last"]
)
@pytest.mark.parametrize("fixed_length", [True, False], ids=["compiled", "any-length"])
@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_outputs_and_gradients_match_keras(cell, return_sequences, masked, fixed_length, inputs):
    fast, plain = twin_layers(cell, return_sequences=return_sequences)
    assert fast.uses_fast_path and uses_custom_gradient(fast, inputs)
    mask = tf.constant(MASK) if masked else None
    fast_outputs, fast_gradients = values_and_gradients(fast, inputs, mask, fixed_length=fixed_length)
    keras_outputs, keras_gradients = values_and_gradients(plain, inputs, mask)
    assert_all_close(fast_outputs, keras_outputs, 1e-5)
    assert_all_close(fast_gradients, keras_gradients, 1e-5)


def compiled_functions(layer, input_shape):
    """How many XLA-compiled functions the layer's graph calls, traced on inputs of `input_shape`."""
    graph_def = tf.function(layer).get_concrete_function(tf.TensorSpec(input_shape, "float32")).graph.as_graph_def()
    return sum(function.attr["_XlaMustCompile"].b for function in graph_def.library.function)


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_a_fixed_number_of_steps_compiles_the_recurrence_with_xla_and_any_length_does_not(cell):
    fast, _ = twin_layers(cell, return_sequences=True)
    assert compiled_functions(fast, (BATCH, TIME, DIM)) >= 1  # the forward pass (the backward is built on demand)
    assert compiled_functions(fast, (BATCH, None, DIM)) == 0  # each new length would compile again


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_eager_calls_on_batches_of_new_lengths_do_not_retrace(cell):
    # As a classifier's evaluation calls it: nearly every length-bucketed batch has a new length.
    # TensorFlow's retracing warning counts traces per Python function over the whole process (other
    # tests' layers too), so this counts the traces of the layer's own graph functions instead.
    fast, plain = twin_layers(cell, return_sequences=True)

    def traces():
        return sum(function.experimental_get_tracing_count() for function in recurrences.GRAPH_FUNCTIONS.values())

    before = traces()
    for length in range(2, 10):
        inputs = np.random.default_rng(length).normal(size=(BATCH, length, DIM)).astype("float32")
        mask = tf.constant(np.arange(length)[None, :] < np.array([length, 4, 1, 0])[:, None])
        np.testing.assert_allclose(fast(inputs, mask=mask), plain(inputs, mask=mask), rtol=1e-5, atol=1e-5)
    assert traces() - before <= 2  # a first trace, then one that generalizes over lengths


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_initial_state_and_return_state_match_keras(cell, inputs):
    fast, plain = twin_layers(cell, return_sequences=True, return_state=True)
    n_states = 2 if cell == "lstm" else 1
    rng = np.random.default_rng(2)
    # Masked leading steps: Keras outputs zeros there but carries the initial state.
    mask = tf.constant(np.concatenate([np.zeros((BATCH, 2), bool), MASK[:, :-2]], axis=1))
    states = [tf.constant(rng.normal(size=(BATCH, UNITS)).astype("float32")) for _ in range(n_states)]
    fast_outputs, fast_gradients = values_and_gradients(fast, inputs, mask, states)
    keras_outputs, keras_gradients = values_and_gradients(plain, inputs, mask, states)
    assert len(fast_outputs) == 1 + n_states
    assert_all_close(fast_outputs, keras_outputs, 1e-5)
    assert_all_close(fast_gradients, keras_gradients, 1e-5)


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)])
@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_mixed_precision_matches_keras(cell, policy, tolerance, inputs):
    fast, plain = twin_layers(cell, return_sequences=True, dtype=policy)
    compute_dtype = policy.removeprefix("mixed_")
    assert fast.uses_fast_path and fast.compute_dtype == compute_dtype and fast.cell.kernel.dtype == "float32"
    assert fast(inputs).dtype == compute_dtype
    fast_outputs, fast_gradients = values_and_gradients(fast, inputs, tf.constant(MASK))
    keras_outputs, keras_gradients = values_and_gradients(plain, inputs, tf.constant(MASK))
    assert_all_close(fast_outputs, keras_outputs, tolerance)
    assert_all_close(fast_gradients, keras_gradients, tolerance)


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_dropout_falls_back_to_keras(cell, inputs):
    fast, plain = twin_layers(cell, dropout=0.5)
    assert not fast.uses_fast_path and not uses_custom_gradient(fast, inputs)
    np.testing.assert_allclose(fast(inputs, training=False), plain(inputs, training=False), atol=1e-6)


def test_other_unsafe_settings_fall_back_to_keras():
    assert not FastLSTM(2, go_backwards=True).uses_fast_path
    assert not FastLSTM(2, recurrent_dropout=0.1).uses_fast_path
    assert not FastLSTM(2, activation="relu").uses_fast_path
    assert not FastLSTM(2, use_cudnn=True).uses_fast_path
    assert not FastGRU(2, reset_after=False).uses_fast_path
    assert not FastSimpleRNN(2, unroll=True).uses_fast_path
    assert not FastSimpleRNN(2, stateful=True).uses_fast_path
    assert FastLSTM(2, use_cudnn=False).uses_fast_path


def stack(cell, fast):
    """Two layers named as in the encoder, fast or plain Keras."""
    layer_class = PAIRS[cell][0 if fast else 1]
    layers = [layer_class(UNITS, return_sequences=True, name="rnn_1"), layer_class(UNITS, name="rnn_2")]
    return keras.Sequential([keras.Input((None, DIM)), *layers], name="stack")


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_weight_files_are_interchangeable_both_ways(cell, tmp_path):
    for source_is_fast in (True, False):
        source, target = stack(cell, source_is_fast), stack(cell, not source_is_fast)
        assert [v.path for v in source.weights] == [v.path for v in target.weights]
        path = tmp_path / f"{cell}-{source_is_fast}.weights.h5"
        source.save_weights(path)
        target.load_weights(path)
        for expected, actual in zip(source.get_weights(), target.get_weights()):
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_config_round_trip(cell, tmp_path):
    fast_class, keras_class = PAIRS[cell]
    layer = fast_class(UNITS, return_sequences=True, name="rnn_1")
    assert layer.get_config() == keras_class(UNITS, return_sequences=True, name="rnn_1").get_config()
    copy = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(copy) is fast_class and copy.get_config() == layer.get_config()
    model = stack(cell, fast=True)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.get_layer("rnn_2")) is fast_class
    x = np.ones((1, 2, DIM), "float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


# === Weight drop (AWD-LSTM's DropConnect on the recurrent kernel) ===


def dropped_twins(cell, **options):
    """A layer with weight drop, a plain Keras twin and the dropped recurrent kernel of the layer's first call.

    The kernel comes from a third layer with the same seed and weights: its first draw is the layer's.
    """
    layer, plain = twin_layers(cell, weight_dropout=0.5, seed=7, **options)
    witness = twin_layers(cell, weight_dropout=0.5, seed=7, **options)[0]
    return layer, plain, np.asarray(witness.recurrent_kernel_for_call(training=True))


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_weight_drop_uses_one_mask_for_the_batch_on_the_fast_path(cell, inputs):
    layer, plain, dropped = dropped_twins(cell, return_sequences=True)
    assert layer.uses_fast_path and uses_custom_gradient(layer, inputs)
    kernel = plain.cell.recurrent_kernel.numpy()
    # DropConnect: every weight is dropped or kept and scaled by 1 / (1 - 0.5), about half each.
    assert np.allclose(dropped[dropped != 0], 2 * kernel[dropped != 0]) and 0.3 < np.mean(dropped == 0) < 0.7

    mask = tf.constant(MASK)
    outputs, gradients = values_and_gradients(layer, inputs, mask, training=True)
    # The same dropped kernel at every step of every sequence: plain Keras with that kernel.
    plain.cell.recurrent_kernel.assign(dropped)
    expected_outputs, expected_gradients = values_and_gradients(plain, inputs, mask)
    assert_all_close(outputs, expected_outputs, 1e-5)
    # The kernel's gradient flows back through the mask (the custom gradient sees the dropped kernel).
    recurrent = [v.path for v in plain.trainable_variables].index(plain.cell.recurrent_kernel.path) + 1
    expected_gradients[recurrent] = expected_gradients[recurrent] * 2 * (dropped != 0)
    assert_all_close(gradients, expected_gradients, 1e-5)


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_weight_drop_draws_a_new_mask_each_call_and_is_off_in_inference(cell, inputs):
    layer, _ = twin_layers(cell, weight_dropout=0.5)
    without, _ = twin_layers(cell)
    first, second = layer(inputs, training=True), layer(inputs, training=True)
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(layer(inputs, training=False), without(inputs, training=False))


@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_weight_drop_reaches_the_keras_implementation(cell, inputs):
    """Off the fast path (here `go_backwards`; on a GPU, cuDNN), Keras' loop gets the dropped kernel.

    Guards the private Keras API that `tftune.keras_private.WeightDroppedInnerLoop` overrides
    (see also tests/test_keras_private.py).
    """
    layer, plain, dropped = dropped_twins(cell, return_sequences=True, go_backwards=True)
    assert not layer.uses_fast_path
    training = np.asarray(layer(inputs, training=True))
    assert not np.allclose(training, layer(inputs, training=False))
    plain.cell.recurrent_kernel.assign(dropped)
    np.testing.assert_allclose(training, plain(inputs), atol=1e-6)


@pytest.mark.skipif(not tf.config.list_logical_devices("GPU"), reason="cuDNN needs a GPU")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_drop_reaches_cudnn(cell, inputs):
    layer, plain, dropped = dropped_twins(cell, return_sequences=True, use_cudnn=True)
    training = np.asarray(layer(inputs, training=True))
    plain.cell.recurrent_kernel.assign(dropped)
    np.testing.assert_allclose(training, plain(inputs), atol=1e-5)


def test_weight_drop_config_and_limits():
    layer = FastLSTM(UNITS, weight_dropout=0.3, name="rnn_1")
    assert layer.get_config()["weight_dropout"] == 0.3
    copy = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(copy) is FastLSTM and copy.weight_dropout == 0.3
    assert "weight_dropout" not in FastLSTM(UNITS).get_config()  # Keras' own config without it
    with pytest.raises(ValueError, match="weight_dropout"):
        FastGRU(UNITS, weight_dropout=1.0)
    with pytest.raises(ValueError, match="weight_dropout"):
        FastLSTM(UNITS, weight_dropout=0.5, recurrent_dropout=0.1)
