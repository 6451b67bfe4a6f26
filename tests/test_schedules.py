"""Tests of the slanted triangular and one-cycle schedules, discriminative optimizers and unfreezing stages."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftune.schedules import (
    DiscriminativeAdam,
    DiscriminativeSGD,
    SlantedTriangular,
    Stage,
    discriminative_multipliers,
    unfreezing_stages,
)


def _paper_stlr(t, total_steps, max_lr, cut_frac=0.1, ratio=32.0):
    """ULMFiT's formula, verbatim."""
    cut = math.floor(total_steps * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return max_lr * (1 + p * (ratio - 1)) / ratio


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_stlr_known_steps():
    schedule = SlantedTriangular(max_lr=0.01, total_steps=1000)
    assert schedule.cut == 100
    assert _lr(schedule, 0) == pytest.approx(0.01 / 32)
    assert _lr(schedule, 50) == pytest.approx(0.01 * (1 + 0.5 * 31) / 32)
    assert _lr(schedule, 100) == pytest.approx(0.01)
    assert _lr(schedule, 550) == pytest.approx(0.01 * (1 + 0.5 * 31) / 32)
    assert _lr(schedule, 1000) == pytest.approx(0.01 / 32)
    assert _lr(schedule, 5000) == pytest.approx(0.01 / 32)


def test_stlr_matches_the_paper_when_the_cut_is_whole():
    schedule = SlantedTriangular(max_lr=0.004, total_steps=200, cut_frac=0.1, ratio=32)
    steps = np.arange(201)
    values = keras.ops.convert_to_numpy(schedule(steps))
    expected = [_paper_stlr(t, 200, 0.004) for t in steps]
    np.testing.assert_allclose(values, expected, rtol=1e-5)


@pytest.mark.parametrize("total_steps", [1, 2, 5, 9, 15, 37])
def test_stlr_short_runs_stay_in_range_and_end_low(total_steps):
    schedule = SlantedTriangular(max_lr=1.0, total_steps=total_steps, ratio=10)
    values = [_lr(schedule, t) for t in range(total_steps + 3)]
    assert all(0.1 - 1e-6 <= value <= 1.0 + 1e-6 for value in values)
    assert values[total_steps] == pytest.approx(0.1)
    assert max(values) == pytest.approx(1.0)
    if schedule.cut == 0:
        assert values[0] == pytest.approx(1.0)


def test_stlr_cycle_starts_at_start_step():
    base = SlantedTriangular(max_lr=0.01, total_steps=200)
    shifted = SlantedTriangular(max_lr=0.01, total_steps=200, start_step=700)
    assert _lr(shifted, 0) == _lr(shifted, 700) == pytest.approx(0.01 / 32)
    for step in (0, 10, 20, 110, 200, 260):
        assert _lr(shifted, 700 + step) == pytest.approx(_lr(base, step))


def test_one_cycle_rises_and_falls_along_cosines():
    from tftune.schedules import OneCycle

    schedule = OneCycle(max_lr=0.01, total_steps=400, start_step=100)
    assert _lr(schedule, 100) == pytest.approx(0.01 / 25, rel=1e-5)
    assert _lr(schedule, 150) == pytest.approx(0.01 / 25 + (0.01 - 0.01 / 25) / 2, rel=1e-5)  # half-way up
    assert _lr(schedule, 200) == pytest.approx(0.01, rel=1e-5)
    assert _lr(schedule, 350) == pytest.approx((0.01 + 0.01 / 25 / 1e4) / 2, rel=1e-5)  # half-way down
    assert _lr(schedule, 500) == _lr(schedule, 9000) == pytest.approx(0.01 / 25 / 1e4, rel=1e-5)
    values = [_lr(schedule, step) for step in range(100, 501)]
    assert values.index(max(values)) == 100
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored.get_config() == schedule.get_config()


def test_stlr_works_on_symbolic_steps():
    schedule = SlantedTriangular(max_lr=0.01, total_steps=1000)
    traced = tf.function(schedule)
    for step in (0, 100, 1000):
        assert float(traced(tf.constant(step, tf.int64))) == pytest.approx(_lr(schedule, step))


def test_stlr_serialization_round_trip():
    schedule = SlantedTriangular(max_lr=0.004, total_steps=321, cut_frac=0.2, ratio=16, start_step=40)
    config = keras.saving.serialize_keras_object(schedule)
    json.dumps(config)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, SlantedTriangular)
    assert restored.get_config() == schedule.get_config()
    assert _lr(restored, 100) == _lr(schedule, 100)


@pytest.mark.parametrize("kwargs", [
    {"max_lr": 0.0, "total_steps": 10},
    {"max_lr": 0.1, "total_steps": 0},
    {"max_lr": 0.1, "total_steps": 10, "cut_frac": 1.0},
    {"max_lr": 0.1, "total_steps": 10, "ratio": 0.5},
    {"max_lr": 0.1, "total_steps": 10, "start_step": -1},
])
def test_stlr_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SlantedTriangular(**kwargs)


def _tiny_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, name="bottom")(inputs)
    hidden = keras.layers.Dense(6, name="middle")(hidden)
    outputs = keras.layers.Dense(1, name="top")(hidden)
    return keras.Model(inputs, outputs)


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True) * 3.0


def _weights(model, layer):
    return [np.array(w) for w in model.get_layer(layer).get_weights()]


def test_discriminative_adam_freezes_zero_multiplier_layers_bit_for_bit():
    model = _tiny_model()
    before = {name: _weights(model, name) for name in ("bottom", "middle", "top")}
    optimizer = DiscriminativeAdam(learning_rate=0.01, multipliers={"bottom": 0.0, "middle/": 0.5})
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    for old, new in zip(before["bottom"], _weights(model, "bottom")):
        assert np.array_equal(old, new)
    for name in ("middle", "top"):
        for old, new in zip(before[name], _weights(model, name)):
            assert not np.array_equal(old, new)


def test_discriminative_adam_first_step_scales_with_multiplier():
    # Adam's first step moves every weight by about lr (m / sqrt(v) = sign(g)),
    # so the largest change of a layer is lr * its multiplier.
    model = _tiny_model()
    before = {name: _weights(model, name)[0] for name in ("bottom", "middle", "top")}
    lr = 0.01
    multipliers = discriminative_multipliers(["bottom", "middle", "top"], factor=2.6)
    model.compile(optimizer=DiscriminativeAdam(learning_rate=lr, multipliers=multipliers), loss="mse")
    model.fit(*_data(), batch_size=32, epochs=1, verbose=0)
    for name, multiplier in multipliers.items():
        change = np.abs(_weights(model, name)[0] - before[name])
        assert change.max() == pytest.approx(lr * multiplier, rel=1e-3)
        assert change.max() <= lr * multiplier * (1 + 1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_discriminative_sgd_updates_are_in_the_ratio_of_the_rates(momentum):
    # Three layers that see the same gradients (same inputs, and the output sums theirs, so the
    # loss's gradient reaches each the same way): with SGD every update is rate * (momentum-averaged) gradient, so the layers'
    # updates stay in the exact ratio of their multipliers, step after step.
    inputs = keras.Input(shape=(4,))
    layers = [keras.layers.Dense(1, kernel_initializer="zeros", name=name) for name in ("bottom", "middle", "top")]
    model = keras.Model(inputs, keras.layers.Add()([layer(inputs) for layer in layers]))
    multipliers = discriminative_multipliers(["bottom", "middle", "top"], factor=2.6)
    model.compile(optimizer=DiscriminativeSGD(learning_rate=0.001, momentum=momentum, multipliers=multipliers),
                  loss="mse")
    model.fit(*_data(), batch_size=8, epochs=2, shuffle=False, verbose=0)
    updates = {name: _weights(model, name)[0] for name in ("bottom", "middle", "top")}
    assert np.abs(updates["top"]).min() > 1e-4
    np.testing.assert_allclose(updates["middle"], updates["top"] / 2.6, rtol=1e-4)
    np.testing.assert_allclose(updates["bottom"], updates["top"] / 2.6**2, rtol=1e-4)


def test_discriminative_adam_with_stlr_and_gradual_unfreezing():
    model = _tiny_model()
    optimizer = DiscriminativeAdam(
        learning_rate=SlantedTriangular(max_lr=0.01, total_steps=8),
        multipliers={"bottom": 0.5},
    )
    # Keras refuses variables an optimizer was not built with: build on all first.
    optimizer.build(model.trainable_variables)
    x, y = _data()
    model.get_layer("bottom").trainable = False
    model.compile(optimizer=optimizer, loss="mse")
    frozen = _weights(model, "bottom")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, _weights(model, "bottom")))
    model.get_layer("bottom").trainable = True
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(frozen[0], _weights(model, "bottom")[0])
    assert int(optimizer.iterations) == 8


def test_multiplier_prefixes_match_whole_path_segments():
    optimizer = DiscriminativeAdam(multipliers={"encoder/rnn_1": 0.5, "encoder/rnn_1/gru_cell/bias": 0.0,
                                                "encoder/": 0.25})
    assert optimizer.multiplier_for("encoder/rnn_1/gru_cell/kernel") == 0.5
    assert optimizer.multiplier_for("encoder/rnn_1/gru_cell/bias") == 0.0
    assert optimizer.multiplier_for("encoder/rnn_10/gru_cell/kernel") == 0.25
    assert optimizer.multiplier_for("head/kernel") == 1.0
    assert optimizer.multiplier_for("encoderx/kernel") == 1.0


def test_discriminative_adam_config_round_trip():
    optimizer = DiscriminativeAdam(
        learning_rate=SlantedTriangular(max_lr=0.004, total_steps=50),
        multipliers={"encoder/rnn_1/": 1 / 2.6, "encoder/rnn_2/": 1.0},
        beta_1=0.8,
    )
    config = optimizer.get_config()
    assert config["multipliers"] == {"encoder/rnn_1/": 1 / 2.6, "encoder/rnn_2/": 1.0}
    assert type(config["multipliers"]) is dict
    json.dumps(keras.saving.serialize_keras_object(optimizer))

    restored = DiscriminativeAdam.from_config(config)
    assert restored.multipliers == optimizer.multipliers
    assert restored.beta_1 == 0.8
    assert isinstance(restored._learning_rate, SlantedTriangular)

    via_keras = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert isinstance(via_keras, DiscriminativeAdam)
    assert via_keras.multipliers == optimizer.multipliers
    assert via_keras._learning_rate.get_config() == optimizer._learning_rate.get_config()


def test_model_saved_with_discriminative_adam_loads_back(tmp_path):
    model = _tiny_model()
    model.compile(optimizer=DiscriminativeAdam(learning_rate=SlantedTriangular(0.01, 10),
                                               multipliers={"bottom": 0.0}), loss="mse")
    model.fit(*_data(), batch_size=16, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, DiscriminativeAdam)
    assert loaded.optimizer.multipliers == {"bottom": 0.0}
    assert int(loaded.optimizer.iterations) == 2


def test_discriminative_multipliers():
    assert discriminative_multipliers(["a", "b", "c"]) == {"a": 2.6 ** -2, "b": 1 / 2.6, "c": 1.0}
    assert discriminative_multipliers(["only"], factor=4) == {"only": 1.0}
    with pytest.raises(ValueError):
        discriminative_multipliers(["a", "a"])


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_unfreezing_stages(n_layers):
    stages = unfreezing_stages(n_layers, stage_epochs=1, total_epochs=4)
    assert [stage.trainable_layers for stage in stages] == list(range(n_layers + 1))
    assert [stage.epochs for stage in stages[:-1]] == [1] * n_layers
    assert stages[-1] == Stage(trainable_layers=n_layers, epochs=max(1, 4 - n_layers))


def test_unfreezing_stages_last_stage_gets_the_rest():
    assert unfreezing_stages(3, stage_epochs=2, total_epochs=10) == [
        Stage(0, 2), Stage(1, 2), Stage(2, 2), Stage(3, 4)]
    assert unfreezing_stages(2, stage_epochs=3, total_epochs=1)[-1] == Stage(2, 1)
    with pytest.raises(ValueError):
        unfreezing_stages(0, stage_epochs=1, total_epochs=3)
