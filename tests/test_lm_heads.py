"""Language-model output kinds: sampled-softmax training, tied head, full-softmax evaluation."""

import json
import math

import keras
import numpy as np
import pytest

from conftest import CORPUS, tiny_corpus, tiny_overrides
from tftune.batches import lm_dataset
from tftune.models import LanguageModel, TextClassifier, build_encoder
from tftune.recipe import load_recipe
from tftune.text import Tokenizer, Vocabulary
from tftune.pretraining import pretrain

DIM, UNITS, SEQ_LEN, BATCH = 8, 16, 12, 16


@pytest.fixture(scope="module")
def corpus_ids():
    """Ids of the first 150 paragraphs of the shipped corpus over a 200-word vocabulary."""
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()][:150]
    tokenizer = Tokenizer()
    vocab = Vocabulary.build([tokenizer.tokenize(line) for line in lines], max_size=200)
    return np.concatenate(vocab.encode(lines, tokenizer)).astype("int32"), len(vocab)


@pytest.fixture(scope="module")
def vectors(corpus_ids):
    _, vocab_size = corpus_ids
    matrix = np.random.default_rng(0).normal(size=(vocab_size, DIM)).astype("float32")
    matrix[0] = 0.0
    return matrix


@pytest.fixture
def data(corpus_ids):
    ids, _ = corpus_ids
    return lm_dataset(ids[:4000], SEQ_LEN, BATCH, shuffle=True).epochs(0, 1), lm_dataset(ids[4000:5000], SEQ_LEN, BATCH)


def language_model(vectors, output, num_sampled=32):
    keras.utils.set_random_seed(0)
    model = LanguageModel(build_encoder(vectors, "lstm", 1, UNITS), output=output, num_sampled=num_sampled)
    model.compile(optimizer=keras.optimizers.Adam(0.01, global_clipnorm=1.0))
    return model


def full_softmax_loss(logits, targets):
    """Mean cross-entropy computed in float64 numpy, independent of Keras' loss."""
    logits = np.asarray(logits, "float64").reshape(-1, logits.shape[-1])
    log_norm = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return float(np.mean(log_norm - logits[np.arange(len(logits)), np.asarray(targets).reshape(-1)]))


def test_sampled_softmax_trains_and_validates_with_the_full_softmax(vectors, data):
    train, valid = data
    model = language_model(vectors, "sampled")
    before = model.evaluate(valid, verbose=0)
    history = model.fit(train, validation_data=valid, epochs=3, shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    after = model.evaluate(valid, verbose=0)
    assert after < before
    assert history["val_loss"][-1] == pytest.approx(after, rel=1e-6)

    # The validation loss is the full-softmax loss of the trained lm_head weights.
    kernel, bias = model.get_layer("lm_head").get_weights()
    losses, counts = [], []
    for inputs, targets in valid:
        hidden = model.backbone(inputs, training=False).numpy()
        losses.append(full_softmax_loss(hidden @ kernel + bias, targets.numpy()))
        counts.append(targets.shape[0])
    assert after == pytest.approx(np.average(losses, weights=counts), rel=1e-4)


def test_sampled_training_loss_is_the_full_loss_when_every_word_is_a_candidate(vectors, data):
    train, _ = data
    model = language_model(vectors, "sampled", num_sampled=10**6)
    assert model.num_sampled == len(vectors)
    inputs, targets = next(iter(train))
    hidden = model.hidden_states(inputs)
    full = full_softmax_loss(model(inputs), targets.numpy())
    assert float(model.sampled_loss(hidden, targets)) == pytest.approx(full, rel=1e-3)


@pytest.mark.parametrize("output", ["sampled", "tied_sampled"])
def test_sampled_loss_is_tensorflow_s_on_the_same_candidates(vectors, data, output):
    import tensorflow as tf

    train, _ = data
    model = language_model(vectors, output, num_sampled=64)
    inputs, targets = next(iter(train))
    hidden = model.hidden_states(inputs)
    candidates = model.draw_candidates(targets)
    # The few-word vocabulary makes accidental hits certain: their removal is checked too.
    assert np.isin(targets.numpy(), candidates[0].numpy()).any()
    # The output vectors: the lm_head kernel's columns, or (tied) the frozen word vectors.
    weights = vectors if output == "tied_sampled" else tf.transpose(model.lm_head.kernel)
    expected = tf.nn.sampled_softmax_loss(
        weights=weights, biases=model.lm_head.bias,
        labels=tf.reshape(tf.cast(targets, "int64"), (-1, 1)), inputs=tf.reshape(hidden, (-1, hidden.shape[-1])),
        num_sampled=64, num_classes=len(vectors), sampled_values=candidates, remove_accidental_hits=True,
    )
    assert float(model.sampled_loss(hidden, targets, candidates)) == pytest.approx(float(tf.reduce_mean(expected)),
                                                                                  rel=1e-5)


def test_tied_sampled_head_trains_only_per_word_biases_and_validates_with_the_full_softmax(vectors, data):
    train, valid = data
    model = language_model(vectors, "tied_sampled")
    # Nothing trainable is units x vocab: the step's cost beyond the bias does not grow with the vocabulary.
    assert [w.path for w in model.trainable_weights if len(vectors) in w.shape] == ["lm_head/bias"]
    before = model.evaluate(valid, verbose=0)
    history = model.fit(train, validation_data=valid, epochs=3, shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    after = model.evaluate(valid, verbose=0)
    assert after < before
    np.testing.assert_array_equal(model.backbone.get_layer("embedding").get_weights()[0], vectors)

    # The validation loss is the full softmax of the projected states against the frozen vectors.
    (bias,) = model.get_layer("lm_head").get_weights()
    losses, counts = [], []
    for inputs, targets in valid:
        projected = model.get_layer("lm_projection")(model.backbone(inputs, training=False)).numpy()
        losses.append(full_softmax_loss(projected @ vectors.T + bias, targets.numpy()))
        counts.append(targets.shape[0])
    assert after == pytest.approx(np.average(losses, weights=counts), rel=1e-4)


@pytest.mark.parametrize("output", ["full", "sampled", "tied", "tied_sampled"])
def test_fixed_length_batches_train_through_the_xla_compiled_step_like_the_uncompiled_one(vectors, data, output):
    """One step, compiled and not, from the same weights and seed: the same loss and updated weights."""
    train, _ = data
    inputs, targets = next(iter(train))
    results = []
    for compiled in (True, False):
        model = language_model(vectors, output)
        assert model.compiles_training_step(inputs)
        if not compiled:
            model.compiles_training_step = lambda x: False
        keras.utils.set_random_seed(1)  # the same sampled candidates
        loss = model.train_on_batch(inputs, targets)
        results.append((loss, [weight.numpy() for weight in model.trainable_weights]))
        assert (model._compiled_gradients is not None) == compiled
    (compiled_loss, compiled_weights), (plain_loss, plain_weights) = results
    assert compiled_loss == pytest.approx(plain_loss, rel=1e-5)
    for compiled_weight, plain_weight in zip(compiled_weights, plain_weights):
        np.testing.assert_allclose(compiled_weight, plain_weight, rtol=1e-4, atol=1e-5)


def test_tied_head_scores_against_the_frozen_embedding_matrix(vectors, data):
    train, valid = data
    model = language_model(vectors, "tied")
    head = model.get_layer("lm_head")
    assert [weight.path for weight in head.weights] == ["lm_head/bias"]
    assert not any(weight.path.startswith("embedding") for weight in model.trainable_weights)
    model.fit(train, epochs=1, shuffle=False, verbose=0)

    embedding = model.backbone.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(embedding, vectors)  # bit for bit
    inputs, _ = next(iter(valid))
    projected = model.get_layer("lm_projection")(model.backbone(inputs)).numpy()
    expected = projected @ embedding.T + head.get_weights()[0]
    np.testing.assert_allclose(model(inputs).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_mixed_float16_sampled_loss_is_finite_float32(vectors, data):
    train, _ = data
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = language_model(vectors, "sampled")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.backbone.get_layer("rnn_1").compute_dtype == "float16"
        inputs, targets = next(iter(train))
        loss = model.sampled_loss(model.hidden_states(inputs, training=True), targets)
        assert loss.dtype == "float32" and np.isfinite(float(loss))
        kernel_before = model.get_layer("lm_head").get_weights()[0]
        history = model.fit(train, epochs=2, shuffle=False, verbose=0).history
        assert all(math.isfinite(value) for value in history["loss"])
        assert not np.array_equal(model.get_layer("lm_head").get_weights()[0], kernel_before)
        assert model(inputs).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("output", ["sampled", "tied"])
def test_backbone_weights_of_the_language_model_load_into_the_classifier(vectors, data, tmp_path, output):
    train, _ = data
    model = language_model(vectors, output)
    model.fit(train.take(3), epochs=1, shuffle=False, verbose=0)
    model.backbone.save_weights(tmp_path / "encoder.weights.h5")

    encoder = build_encoder(np.zeros_like(vectors), "lstm", 1, UNITS)
    encoder.load_weights(tmp_path / "encoder.weights.h5")
    for trained, loaded in zip(model.backbone.weights, encoder.weights, strict=True):
        np.testing.assert_array_equal(trained.numpy(), loaded.numpy())
    classifier = TextClassifier(encoder, num_classes=3)
    assert classifier(np.array([[5, 6, 2]])).shape == (1, 3)


@pytest.mark.parametrize("output", ["full", "sampled", "tied", "tied_sampled"])
def test_output_bias_starts_at_the_log_unigram_probabilities(vectors, corpus_ids, output):
    ids, vocab_size = corpus_ids
    counts = np.bincount(ids, minlength=vocab_size)
    model = LanguageModel(build_encoder(vectors, "lstm", 1, UNITS), output=output, unigram_counts=counts)
    bias = model.get_layer("lm_head").get_weights()[-1]
    np.testing.assert_allclose(np.exp(bias), (counts + 1) / (counts + 1).sum(), rtol=1e-5)


def test_pretrain_records_the_output_kind(small_data, tmp_path):
    recipe = load_recipe("gru-glove", [*tiny_overrides(), "pretrain.output=tied"])
    metrics = pretrain(recipe, tmp_path / "run", tiny_corpus(small_data))
    assert metrics["output"] == "tied"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["output"] == "tied"
    assert math.isfinite(metrics["valid"]["perplexity"])
