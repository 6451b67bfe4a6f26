"""AWD-LSTM regularization: locked and word dropout, AR/TAR, the recipe keys, fine-tuning and export."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tftune.errors import RecipeError
from tftune.export import Predictor, export_classifier
from tftune.model_configs import backbone_config, language_model_config
from tftune.models import (
    LanguageModel,
    TextBackbone,
    TextPreprocessor,
    build_encoder,
    build_language_model,
    cudnn_report,
)
from tftune.recipe import load_recipe
from tftune.regularization import LockedDropout, WordDropout, activation_regularization
from tftune.text import Tokenizer, Vocabulary
from tftune.runs import PretrainRun
from tftune.finetuning import build_member_classifier, classifier_dropouts

VOCAB, DIM, UNITS = 30, 4, 6
AWD_RATES = {"weight_dropout": 0.5, "embedding_dropout": 0.2, "input_dropout": 0.4, "hidden_dropout": 0.2}


@pytest.fixture
def vectors():
    matrix = np.random.default_rng(0).normal(size=(VOCAB, DIM)).astype("float32")
    matrix[0] = 0.0  # padding
    return matrix


# === Locked and word dropout ===


def test_locked_dropout_keeps_one_mask_per_sequence_for_every_step():
    x = np.ones((64, 5, 8), "float32")
    y = LockedDropout(0.5, seed=0)(x, training=True).numpy()
    assert set(np.unique(y)) == {0.0, 2.0}  # kept features scaled by 1 / (1 - rate)
    assert (y == y[:, :1]).all()  # the same mask at every time step
    assert len({row.tobytes() for row in y[:, 0]}) > 32  # a different mask for (almost) every sequence
    assert abs(y.mean() - 1.0) < 0.1
    np.testing.assert_array_equal(LockedDropout(0.5)(x, training=False), x)


def test_locked_and_word_dropout_have_no_weights_and_round_trip_their_config():
    for layer in (LockedDropout(0.3, seed=2, name="locked"), WordDropout(VOCAB, 0.1, name="words")):
        copy = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(copy) is type(layer) and copy.get_config() == layer.get_config()
        assert layer.weights == []
    with pytest.raises(ValueError, match="rate"):
        LockedDropout(1.0)


def test_word_dropout_drops_a_word_wherever_it_occurs_and_keeps_padding_masked(vectors):
    ids = np.array([[1, 2, 3, 1, 4, 0, 0], [3, 1, 2, 4, 2, 1, 0]], "int32")
    embedded = vectors[ids]
    layer = WordDropout(VOCAB, 0.5, seed=3)
    dropped_words = set()
    for _ in range(4):
        y = layer(embedded, ids, training=True).numpy()
        for word in (1, 2, 3, 4):
            rows = y[ids == word]
            dropped = np.all(rows == 0)
            assert dropped or np.allclose(rows, 2 * embedded[ids == word])  # the whole batch, one way
            dropped_words |= {word} if dropped else set()
        assert np.all(y[ids == 0] == 0)
    assert dropped_words  # some word was dropped in four calls
    np.testing.assert_array_equal(layer(embedded, ids, training=False), embedded)

    # In the encoder, the padding mask still reaches the recurrent layers: a padded step repeats
    # the last real step's output, in training too.
    encoder = build_encoder(vectors, "gru", 1, UNITS, embedding_dropout=0.5)
    states = encoder(ids, training=True).numpy()
    np.testing.assert_array_equal(states[0, 5:], np.repeat(states[0, 4:5], 2, axis=0))


def test_weight_drop_keeps_layers_cudnn_eligible(vectors):
    encoder = build_encoder(vectors, "lstm", 2, UNITS, **AWD_RATES)
    assert all(line.endswith(": cuDNN-eligible") for line in cudnn_report(encoder))
    assert all(encoder.get_layer(name).weight_dropout == 0.5 for name in ("rnn_1", "rnn_2"))


def test_weight_files_keep_their_layout_and_old_ones_still_load(vectors, tmp_path):
    def language_model(matrix, **rates):
        encoder = build_encoder(matrix, "lstm", 2, UNITS, 0.2, **rates)
        return build_language_model(encoder, "tied", output_dropout=0.1 if rates else 0.0)

    regularized, plain = language_model(vectors, **AWD_RATES), language_model(vectors)
    assert [w.path for w in regularized.weights] == [w.path for w in plain.weights]
    path = tmp_path / "lm.weights.h5"
    regularized.save_weights(path)
    # The new layers only add empty groups: without them, this is the file an older tftune wrote.
    with h5py.File(path, "a") as file:
        added = []
        file.visit(lambda name: added.append(name) if name.endswith(("locked_dropout", "word_dropout")) else None)
        assert added
        for name in added:
            del file[name]
    restored = language_model(np.zeros_like(vectors), **AWD_RATES)
    restored.load_weights(path)
    for expected, actual in zip(regularized.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, expected)


# === AR and TAR ===


def test_activation_regularization_penalises_dropped_outputs_and_steps_between_raw_ones():
    states = np.array([[[1.0, 0.0], [3.0, 2.0], [2.0, 2.0]]], "float32")
    dropped = np.array([[[2.0, 0.0], [0.0, 4.0], [4.0, 0.0]]], "float32")
    assert float(activation_regularization(states, dropped, ar=2.0)) == pytest.approx(2.0 * 36 / 6)
    assert float(activation_regularization(states, dropped, tar=0.5)) == pytest.approx(0.5 * 9 / 4)
    assert activation_regularization(states, dropped) == 0.0


def language_model_after_one_step(vectors, output, x, y, ar=0.0, tar=0.0):
    """A 2-layer LSTM language model, its starting weights and logged loss after one SGD step."""
    keras.utils.set_random_seed(0)
    model = LanguageModel(build_encoder(vectors, "lstm", 2, UNITS), output=output, num_sampled=VOCAB, ar=ar, tar=tar)
    model(x)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [variable.numpy() for variable in model.trainable_variables]
    loss = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history["loss"][0]
    return model, before, loss


@pytest.mark.parametrize("output", ["full", "sampled", "tied"])
def test_ar_and_tar_join_the_training_loss_but_not_the_reported_one(vectors, output):
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(4, 9)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    plain, start, plain_loss = language_model_after_one_step(vectors, output, x, y)
    regularized, _, loss = language_model_after_one_step(vectors, output, x, y, ar=2.0, tar=1.0)
    assert loss == pytest.approx(plain_loss, abs=1e-6)  # the logged loss is the cross-entropy alone

    # The step's extra change is the gradient of the penalty, computed here by hand at the start.
    fresh = LanguageModel(build_encoder(vectors, "lstm", 2, UNITS), output=output)
    fresh(x)
    for variable, value in zip(fresh.trainable_variables, start, strict=True):
        variable.assign(value)
    with tf.GradientTape() as tape:
        states = fresh.backbone(x, training=True)
        penalty = 2.0 * tf.reduce_mean(states**2) + tf.reduce_mean((states[:, 1:] - states[:, :-1]) ** 2)
    gradients = tape.gradient(penalty, fresh.trainable_variables)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in gradients if g is not None) > 1e-2  # far above atol
    for after_plain, after, gradient in zip(
        plain.trainable_variables, regularized.trainable_variables, gradients, strict=True
    ):
        expected = 0.0 if gradient is None else -gradient.numpy()  # the head does not affect the penalty
        np.testing.assert_allclose(after.numpy() - after_plain.numpy(), expected, atol=2e-5)

    # Evaluation (hence the validation perplexity) is the cross-entropy alone.
    logits = regularized(x, training=False)
    cross_entropy = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    assert regularized.evaluate(x, y, verbose=0) == pytest.approx(cross_entropy, rel=1e-5)


# === Recipe keys, fine-tuning and export ===


def test_shipped_recipe_uses_ar_tar_without_awd_dropouts_and_bad_values_are_rejected():
    # AR/TAR lowered the small LM's perplexity; the dropouts only help long, large runs (docs/guides/pretraining.md).
    recipe = load_recipe("lstm-glove")
    assert all(getattr(recipe.encoder, key) == 0.0 for key in (*AWD_RATES, "output_dropout"))
    assert (recipe.get("pretrain.ar"), recipe.get("pretrain.tar"), recipe.get("finetune.dropout_scale")) == (2, 1, 1)
    for override, expected in [
        ("encoder.weight_dropout=1", "encoder.weight_dropout must be a number in [0, 1), got 1"),
        ("encoder.hidden_dropout=-0.1", "encoder.hidden_dropout must be a number in [0, 1), got -0.1"),
        ("pretrain.tar=-2", "pretrain.tar must be a number >= 0, got -2"),
        ("finetune.dropout_scale=-0.5", "finetune.dropout_scale must be a number >= 0, got -0.5"),
    ]:
        with pytest.raises(RecipeError) as info:
            load_recipe("lstm-glove", [override])
        assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def pretrained(vectors, tmp_path):
    """A small pretrain run with every AWD rate on: its recipe, vocabulary and untrained language model."""
    texts = ["a fine and moving film", "a dull and tired film", "moving , fine , bright", "dull , tired , grey"]
    tokenizer = Tokenizer()
    vocab = Vocabulary.build([tokenizer.tokenize(text) for text in texts], max_size=VOCAB)
    recipe = load_recipe("lstm-glove", [
        "encoder.layers=2", f"encoder.units={UNITS}", *(f"encoder.{key}={rate}" for key, rate in AWD_RATES.items()),
        "encoder.output_dropout=0.3",
    ])
    with PretrainRun.create(tmp_path / "lm") as run:
        run.write_info(vocab, tokenizer, DIM)
        run.write_recipe(recipe)
        backbone = TextBackbone(**backbone_config(recipe.encoder, len(vocab), DIM), embeddings=vectors[: len(vocab)])
        run.save_model(LanguageModel(backbone, **language_model_config(recipe), preprocessor=TextPreprocessor(vocab)))
        run.write_metrics({})
    return PretrainRun.open(tmp_path / "lm"), texts


def test_dropout_scale_multiplies_the_pretrain_runs_rates_in_the_classifier(pretrained):
    run, _ = pretrained
    recipe = run.recipe.with_overrides(["finetune.dropout_scale=0.5", "encoder.weight_dropout=0"])
    classifier = build_member_classifier(recipe, run, "classifier", 2)
    encoder = classifier.get_layer("encoder")
    assert encoder.get_layer("rnn_2").weight_dropout == 0.25  # the pretrain run's rate, not the recipe's
    assert encoder.get_layer("word_dropout").rate == 0.1
    assert encoder.get_layer("input_dropout").rate == 0.2
    assert encoder.get_layer("rnn_1_hidden_dropout").rate == 0.1
    assert encoder.get_layer("embedding_dropout").rate == 0.1  # encoder.dropout too
    assert classifier.get_layer("classifier_output_dropout").rate == 0.15
    with pytest.raises(RecipeError) as info:
        classifier_dropouts(run.recipe.with_overrides(["finetune.dropout_scale=2.5"]), run)
    assert str(info.value) == (
        "finetune.dropout_scale = 2.5 takes encoder.weight_dropout from 0.5 to 1.25; "
        "every scaled dropout rate must stay below 1"
    )


def graph_op_types(export):
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((export / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    return {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}


def test_export_of_a_classifier_trained_with_every_piece_is_deterministic(pretrained, tmp_path):
    run, texts = pretrained
    classifier = build_member_classifier(run.recipe, run, "classifier", 2)
    ids = np.zeros((4, 8), "int32")
    for row, doc in enumerate(run.vocab.encode(texts, run.tokenizer)):
        ids[row, : len(doc)] = doc[:8]
    labels = np.array([1, 0, 1, 0])
    classifier.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(ids, labels, epochs=2, verbose=0)
    rnn = classifier.get_layer("encoder").get_layer("rnn_1")
    assert not np.allclose(classifier(ids, training=True), classifier(ids, training=True))

    classifier.preprocessor.max_len = 8
    export = export_classifier(classifier, ["neg", "pos"], tmp_path / "export")
    op_types = graph_op_types(export)
    assert not [op for op in op_types if "Random" in op or "Cudnn" in op]
    assert "MatMul" in op_types  # the graph was read
    predictor = Predictor(export)
    first, second = predictor.predict(texts)[1], predictor.predict(texts)[1]
    np.testing.assert_array_equal(first, second)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(classifier(ids, training=False)))
    np.testing.assert_allclose(first, expected, atol=1e-5)
    assert rnn.weight_dropout == 0.5  # trained with weight drop on
