"""A task's `fit` and `evaluate` on raw strings in memory: the batches tftune's fine-tuning makes.

The texts are tokenized once and batched by length, in a new order every epoch; `shuffle=False`
keeps their order, and labels and sample weights stay with their texts. Each test trains a tiny
classifier on the first reviews of the shipped authors task (lengths from a few tokens to the cut).
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftune.data import read_labeled
from tftune.models import TextBackbone, TextClassifier, TextPreprocessor
from tftune.text import Tokenizer, Vocabulary

AUTHORS = Path(__file__).resolve().parents[1] / "pretrained" / "authors" / "train.csv"
EXAMPLES, MAX_LEN, BATCH = 192, 120, 16


@pytest.fixture(scope="module")
def authors():
    """`(texts, labels, vocabulary, ids per text)` of the first `EXAMPLES` training texts."""
    texts, labels = read_labeled(AUTHORS)
    texts, labels = texts[:EXAMPLES], labels[:EXAMPLES]
    classes = sorted(set(labels))
    tokenizer = Tokenizer(lowercase=True)
    vocab = Vocabulary.build([tokenizer.tokenize(text) for text in texts], max_size=5000, min_freq=1)
    ids = [vocab.encode([text], tokenizer)[0][:MAX_LEN] for text in texts]
    return texts, np.array([classes.index(label) for label in labels]), vocab, ids


def classifier(vocab, n_classes, run_eagerly=False):
    keras.utils.set_random_seed(0)
    model = TextClassifier(TextBackbone(len(vocab), 8, "gru", 1, 16), n_classes,
                           preprocessor=TextPreprocessor(vocab, lowercase=True, max_len=MAX_LEN))
    model.compile_for_classes(optimizer=keras.optimizers.Adam(0.01), run_eagerly=run_eagerly)
    return model


def recorded_fit(model, *args, **kwargs):
    """`model.fit(*args, **kwargs)` and the `(ids, y, sample_weight)` of every step, as numpy."""
    steps, train_step = [], model.train_step

    def record(data):
        steps.append(tuple(None if part is None else np.asarray(part)
                           for part in keras.utils.unpack_x_y_sample_weight(data)))
        return train_step(data)

    model.train_step = record  # run eagerly, so every step comes through here
    history = model.fit(*args, verbose=0, **kwargs)
    return history, steps


def row_tags(n):
    """Sample weights that name their row: row i weighs (i + 1) / n."""
    return (np.arange(n) + 1) / n


def tagged_rows(steps, per_epoch):
    """The row numbers of each epoch's steps in order, read from their `row_tags` weights."""
    rows = [np.rint(weights * EXAMPLES).astype(int) - 1 for _, _, weights in steps]
    return [np.concatenate(rows[i : i + per_epoch]) for i in range(0, len(rows), per_epoch)]


def test_fit_trains_on_batches_of_similar_lengths(authors):
    texts, labels, vocab, ids = authors
    model = classifier(vocab, int(labels.max()) + 1, run_eagerly=True)
    history, steps = recorded_fit(model, texts, labels, batch_size=BATCH, epochs=3)

    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    per_epoch = -(-EXAMPLES // BATCH)
    assert len(steps) == 3 * per_epoch
    lengths = np.array([len(row) for row in ids])
    real = slots = 0
    for batch_ids, _, _ in steps:
        row_lengths = np.count_nonzero(batch_ids, axis=1)
        assert batch_ids.shape[1] == row_lengths.max()  # padded to its own longest text
        real, slots = real + row_lengths.sum(), slots + batch_ids.size
    # Batches of texts in their order would be padded far more: that is what bucketing saves.
    in_order = sum(len(chunk) * chunk.max() for chunk in np.array_split(lengths, per_epoch))
    assert lengths.sum() / in_order < 0.75
    assert real / slots > 0.9, real / slots
    assert real == 3 * lengths.sum()


def test_rows_keep_their_labels_and_sample_weights(authors):
    texts, labels, vocab, ids = authors
    model = classifier(vocab, int(labels.max()) + 1, run_eagerly=True)
    _, steps = recorded_fit(model, texts, labels, sample_weight=row_tags(EXAMPLES), batch_size=BATCH, epochs=1)

    (rows,) = tagged_rows(steps, len(steps))
    assert sorted(rows) == list(range(EXAMPLES))  # every text once
    for (batch_ids, batch_labels, _), batch_rows in zip(steps, np.split(rows, np.cumsum([len(s[0]) for s in steps])[:-1])):
        np.testing.assert_array_equal(batch_labels, labels[batch_rows])
        for row_ids, row in zip(batch_ids, batch_rows):
            np.testing.assert_array_equal(row_ids[: len(ids[row])], ids[row])
            assert not row_ids[len(ids[row]) :].any()


def test_fit_draws_a_new_order_every_epoch_and_keeps_the_order_without_shuffle(authors):
    texts, labels, vocab, _ = authors
    per_epoch = -(-EXAMPLES // BATCH)
    weights = row_tags(EXAMPLES)

    _, steps = recorded_fit(classifier(vocab, int(labels.max()) + 1, run_eagerly=True), texts, labels,
                            sample_weight=weights, batch_size=BATCH, epochs=2)
    first, second = tagged_rows(steps, per_epoch)
    assert sorted(first) == sorted(second) == list(range(EXAMPLES))
    assert list(first) != list(second)

    _, steps = recorded_fit(classifier(vocab, int(labels.max()) + 1, run_eagerly=True), texts, labels,
                            sample_weight=weights, batch_size=BATCH, epochs=2, shuffle=False)
    for epoch in tagged_rows(steps, per_epoch):
        assert list(epoch) == list(range(EXAMPLES))


def test_sample_weights_scale_the_loss(authors):
    texts, labels, vocab, _ = authors
    model = classifier(vocab, int(labels.max()) + 1)
    before = [weight.numpy() for weight in model.trainable_weights]
    history = model.fit(texts, labels, sample_weight=np.zeros(EXAMPLES), batch_size=BATCH, epochs=1, verbose=0)
    assert history.history["loss"] == [0.0]
    for old, new in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())  # weighed nothing, so nothing moved

    plain = model.evaluate(texts, labels, verbose=0, return_dict=True)
    doubled = model.evaluate(texts, labels, sample_weight=np.full(EXAMPLES, 2.0), verbose=0, return_dict=True)
    assert doubled["loss"] == pytest.approx(2 * plain["loss"], rel=1e-5)


def test_evaluate_in_memory_matches_the_users_own_batches(authors):
    texts, labels, vocab, _ = authors
    model = classifier(vocab, int(labels.max()) + 1)
    model.fit(texts, labels, batch_size=BATCH, epochs=1, verbose=0)
    in_memory = model.evaluate(texts, labels, verbose=0, return_dict=True)
    streamed = model.evaluate(tf.data.Dataset.from_tensor_slices((texts, labels)).batch(7), verbose=0,
                              return_dict=True)
    assert in_memory["accuracy"] == pytest.approx(streamed["accuracy"])
    assert in_memory["loss"] == pytest.approx(streamed["loss"], rel=1e-4)
    probabilities = model.predict(texts[:5], verbose=0)  # in the texts' order
    np.testing.assert_allclose(probabilities, model.predict(texts[:5][::-1], verbose=0)[::-1], atol=1e-5)
