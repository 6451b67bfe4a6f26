"""Encoder, heads and pooling on a tiny vocabulary."""

import keras
import numpy as np
import pytest

from tftune.models import (
    ConcatPooling,
    TextClassifier,
    build_encoder,
    build_language_model,
    cudnn_report,
)

VOCAB, DIM = 12, 4


@pytest.fixture
def vectors():
    return np.random.default_rng(0).normal(size=(VOCAB, DIM)).astype("float32")


@pytest.mark.parametrize("cell, layer_type", [("simple_rnn", "SimpleRNN"), ("lstm", "LSTM"), ("gru", "GRU")])
def test_encoder_stacks_the_recipe_cell_on_a_frozen_embedding(vectors, cell, layer_type):
    encoder = build_encoder(vectors, cell, layers=3, units=5)
    rnns = [layer for layer in encoder.layers if layer.name.startswith("rnn_") and "dropout" not in layer.name]
    assert [type(layer).__name__ for layer in rnns] == [layer_type] * 3
    embedding = encoder.get_layer("embedding")
    assert not embedding.trainable
    assert all(not w.path.startswith("embedding") for w in encoder.trainable_weights)
    np.testing.assert_array_equal(embedding.get_weights()[0], vectors)
    assert encoder(np.array([[3, 4, 5]])).shape == (1, 3, 5)


def test_gru_and_lstm_keep_cudnn_settings(vectors):
    gru = build_encoder(vectors, "gru", layers=2, units=5)
    assert gru.get_layer("rnn_1").cell.reset_after
    assert all(line.endswith("cuDNN-eligible") for line in cudnn_report(gru))
    assert all("not cuDNN-eligible" in line for line in cudnn_report(build_encoder(vectors, "simple_rnn", 1, 5)))
    assert "use_cudnn=False" in cudnn_report(build_encoder(vectors, "lstm", 1, 5, use_cudnn=False))[0]


def test_language_model_scores_every_position_in_float32(vectors):
    model = build_language_model(build_encoder(vectors, "lstm", 1, 5))
    logits = model(np.array([[3, 4, 5, 6]]))
    assert logits.shape == (1, 4, VOCAB) and logits.dtype == "float32"


@pytest.mark.parametrize("mode", ["concat_pool", "last"])
def test_padding_never_changes_the_classifier_output(vectors, mode):
    classifier = TextClassifier(build_encoder(vectors, "gru", 2, 6), num_classes=3, head=mode)
    short = classifier(np.array([[3, 4, 5, 2]]), training=False)
    padded = classifier(np.array([[3, 4, 5, 2, 0, 0, 0]]), training=False)
    np.testing.assert_allclose(short, padded, atol=1e-6)


def test_concat_pooling_takes_last_max_and_mean_over_real_steps():
    x = np.array([[[1.0, -1.0], [3.0, -5.0], [9.0, 9.0]]], "float32")
    mask = np.array([[True, True, False]])
    pooled = ConcatPooling()(x, mask=mask).numpy()
    np.testing.assert_allclose(pooled, [[3.0, -5.0, 3.0, -1.0, 2.0, -3.0]])
    assert ConcatPooling("last")(x, mask=mask).numpy().tolist() == [[3.0, -5.0]]


def test_concat_pooling_config_round_trip():
    layer = ConcatPooling("last", name="pool")
    copy = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(copy, ConcatPooling) and copy.mode == "last" and copy.name == "pool"


def test_mixed_precision_keeps_logits_float32(vectors):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        classifier = TextClassifier(build_encoder(vectors, "lstm", 1, 5), num_classes=2)
        assert classifier(np.array([[3, 4, 2]])).dtype == "float32"
        assert classifier.get_layer("encoder").get_layer("rnn_1").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_reverse_tokens_reverses_real_ids_and_keeps_padding_right():
    from tftune.models import ReverseTokens

    ids = np.array([[5, 6, 7, 2, 0, 0], [8, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], "int32")
    reversed_ids = keras.ops.convert_to_numpy(ReverseTokens()(ids))
    assert reversed_ids.tolist() == [[2, 7, 6, 5, 0, 0], [2, 8, 0, 0, 0, 0], [0] * 6]


def test_backward_classifier_sees_the_reversed_document():
    from tftune.models import TextClassifier, build_encoder

    vectors = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")
    encoder = build_encoder(vectors, cell="gru", layers=1, units=6)
    forward = TextClassifier(encoder, 2, head_dropout=0.0)
    backward = TextClassifier(encoder, 2, head_dropout=0.0, direction="backward")
    backward.set_weights(forward.get_weights())
    ids = np.array([[5, 6, 7, 2, 0]], "int32")
    reversed_ids = np.array([[2, 7, 6, 5, 0]], "int32")
    np.testing.assert_allclose(backward(ids), forward(reversed_ids), atol=1e-6)


def test_ensemble_outputs_the_log_of_the_mean_probabilities():
    from tftune.models import ClassifierEnsemble, TextClassifier, build_encoder, ensemble_members

    vectors = np.random.default_rng(1).normal(size=(30, 4)).astype("float32")
    members = [
        TextClassifier(build_encoder(vectors, cell="lstm", layers=1, units=6), 3, name=name, direction=direction)
        for name, direction in (("classifier_forward", "forward"), ("classifier_backward", "backward"))
    ]
    ensemble = ClassifierEnsemble(members)
    ids = np.array([[5, 6, 7, 2, 0], [9, 2, 0, 0, 0]], "int32")
    mean = np.mean([keras.ops.convert_to_numpy(keras.ops.softmax(member(ids))) for member in members], axis=0)
    np.testing.assert_allclose(np.exp(keras.ops.convert_to_numpy(ensemble(ids))), mean, atol=1e-6)
    assert ensemble_members(ensemble) == members and ensemble_members(members[0]) == [members[0]]


def test_every_model_rebuilds_from_its_config_and_its_keras_file(vectors, tmp_path):
    from tftune.models import ClassifierEnsemble, LanguageModel, TextBackbone, TextClassifier

    backbone = TextBackbone(VOCAB, DIM, "gru", 2, 6, dropout=0.1, weight_dropout=0.2, embeddings=vectors)
    backward = TextBackbone.from_config(backbone.get_config())
    assert backward.get_config() == backbone.get_config()
    models = {
        "backbone": backbone,
        "language_model": LanguageModel(backbone, output="tied", output_dropout=0.1, ar=2.0),
        "classifier": TextClassifier(backbone, 3, head="last", head_dropout=0.2, direction="forward", name="a"),
        "ensemble": ClassifierEnsemble(
            [TextClassifier(backbone, 3, name="a"), TextClassifier(backward, 3, direction="backward", name="b")]
        ),
    }
    ids = np.array([[5, 6, 7, 2, 0]], "int32")
    for name, model in models.items():
        rebuilt = type(model).from_config(model.get_config())
        assert rebuilt.get_config() == model.get_config(), name
        rebuilt.set_weights(model.get_weights())
        np.testing.assert_allclose(rebuilt(ids), model(ids), atol=1e-6, err_msg=name)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model) and loaded.get_config() == model.get_config(), name
        np.testing.assert_allclose(loaded(ids), model(ids), atol=1e-6, err_msg=name)
    # The frozen embedding stays frozen through the file.
    assert not keras.saving.load_model(tmp_path / "backbone.keras").get_layer("embedding").trainable

