"""Tests of tftune.batches: LM windows, length-bucketed classification batches, epochs in a seeded order."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tftune.batches import classification_dataset, lm_dataset, lm_windows, truncate
from tftune.data import read_labeled
from tftune.errors import DataError

REPO = Path(__file__).resolve().parents[1]
REVIEWS = REPO / "pretrained" / "movie-reviews"


# === Language-model windows ===


def test_lm_windows_are_contiguous_and_shifted_by_one():
    ids = np.arange(100, 123, dtype="int32")  # 23 ids: 22 targets, so 4 windows of 5
    inputs, targets = lm_windows(ids, 5)
    assert inputs.shape == targets.shape == (4, 5)
    np.testing.assert_array_equal(inputs.ravel(), ids[:20])
    np.testing.assert_array_equal(targets.ravel(), ids[1:21])


def test_lm_windows_fit_exactly():
    inputs, targets = lm_windows(np.arange(11), 5)  # 10 targets fill two windows
    np.testing.assert_array_equal(targets[-1], [6, 7, 8, 9, 10])


@pytest.mark.parametrize("length", [0, 1, 5])
def test_lm_windows_too_small_corpus(length):
    with pytest.raises(DataError, match=f"corpus too small: {length} tokens for sequence length 5"):
        lm_windows(np.arange(length), 5)


def test_lm_dataset_batches():
    import tensorflow as tf

    ids = np.arange(1, 1002, dtype="int32")  # 1,000 targets: 100 windows of 10
    dataset = lm_dataset(ids, seq_len=10, batch_size=32, shuffle=True, seed=3).epochs(0, 1)
    assert dataset.element_spec[0].dtype == tf.int32
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert [x.shape for x, _ in batches] == [(32, 10)] * 3 + [(4, 10)]
    inputs = np.concatenate([x for x, _ in batches])
    targets = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(targets, inputs + 1)
    np.testing.assert_array_equal(np.sort(inputs[:, 0]), np.arange(1, 1001, 10))  # each window once


# === Classification batches ===


@pytest.fixture(scope="module")
def encoded_reviews():
    """The shipped validation reviews as id arrays (cut to 400) and class indices."""
    from tftune.text import Tokenizer, Vocabulary

    texts, labels = read_labeled(REVIEWS / "valid.csv")
    tokenizer = Tokenizer()
    vocab = Vocabulary.build((tokenizer.tokenize(text) for text in texts), max_size=5000)
    classes = sorted(set(labels))
    return truncate(vocab.encode(texts, tokenizer), 400), [classes.index(label) for label in labels]


def unpad(row):
    """A padded row without its trailing zeros (documents never contain the PAD id 0)."""
    nonzero = np.flatnonzero(row)
    return tuple(row[: nonzero[-1] + 1]) if len(nonzero) else ()


def epoch_examples(dataset, batch_size):
    examples = Counter()
    for ids, labels in dataset:
        ids, labels = ids.numpy(), labels.numpy()
        assert ids.dtype == np.int32 and labels.dtype == np.int32
        assert 1 <= len(ids) <= batch_size and len(labels) == len(ids)
        lengths = [len(unpad(row)) for row in ids]
        assert ids.shape[1] == max(lengths)  # padded to the longest in the batch, no further
        examples.update((unpad(row), int(label)) for row, label in zip(ids, labels))
    return examples


@pytest.mark.parametrize("shuffle", [False, True])
def test_classification_dataset_yields_every_example_once_per_epoch(encoded_reviews, shuffle):
    id_lists, labels = encoded_reviews
    assert all(len(ids) and ids.min() > 0 for ids in id_lists)
    expected = Counter((tuple(ids), label) for ids, label in zip(id_lists, labels))
    dataset = classification_dataset(id_lists, labels, batch_size=16, shuffle=shuffle, seed=1)
    first, second = (dataset.epochs(0, 1), dataset.epochs(1, 2)) if shuffle else (dataset, dataset)
    # Unpadding at the right end recovers each document with its own label: padding is on the right.
    assert epoch_examples(first, 16) == expected
    assert epoch_examples(second, 16) == expected


def test_classification_dataset_reshuffles_every_epoch(encoded_reviews):
    id_lists, labels = encoded_reviews
    dataset = classification_dataset(id_lists, labels, batch_size=16, shuffle=True, seed=1)
    first, second = ([tuple(ids.numpy()[0]) for ids, _ in dataset.epochs(epoch, epoch + 1)] for epoch in range(2))
    assert first != second


def batch_keys(dataset):
    """Each batch of `dataset` as a tuple of its examples: (unpadded row, label or LM targets)."""
    return [
        tuple((unpad(row), tuple(np.atleast_1d(target))) for row, target in zip(x.numpy(), y.numpy()))
        for x, y in dataset
    ]


@pytest.mark.parametrize("kind", ["lm", "classification"])
def test_an_epoch_s_order_depends_on_the_seed_and_the_epoch_alone(encoded_reviews, kind):
    def training_batches(seed):
        if kind == "lm":
            return lm_dataset(np.arange(1, 2002, dtype="int32"), seq_len=10, batch_size=16, shuffle=True, seed=seed)
        return classification_dataset(*encoded_reviews, batch_size=16, shuffle=True, seed=seed)

    dataset = training_batches(seed=1)
    steps = dataset.steps_per_epoch
    two_epochs = batch_keys(dataset.epochs(0, 2))
    epoch_0, epoch_1 = two_epochs[:steps], two_epochs[steps:]
    assert len(epoch_1) == steps
    # Epoch 1 alone, after other iterations of the data, and from a dataset made anew (a resumed run).
    assert batch_keys(dataset.epochs(1, 2)) == epoch_1
    assert sum(1 for _ in dataset.epochs(0, 3)) == 3 * steps  # another full iteration of the data first
    assert batch_keys(dataset.epochs(1, 2)) == epoch_1
    assert batch_keys(training_batches(seed=1).epochs(1, 2)) == epoch_1
    # Another epoch or another seed: the same examples in another order.
    assert epoch_0 != epoch_1
    assert batch_keys(training_batches(seed=2).epochs(1, 2)) != epoch_1
    assert sorted(sum(epoch_0, ())) == sorted(sum(epoch_1, ()))


@pytest.fixture(scope="module")
def encoded_train_reviews():
    """The shipped training reviews as whole id arrays (the recipe's vocabulary settings)."""
    from tftune.text import Tokenizer, Vocabulary

    texts, labels = read_labeled(REVIEWS / "train.csv")
    tokenizer = Tokenizer()
    vocab = Vocabulary.build((tokenizer.tokenize(text) for text in texts), max_size=20000, min_freq=2)
    classes = sorted(set(labels))
    return vocab.encode(texts, tokenizer), [classes.index(label) for label in labels]


# Most reviews are longer than 400 tokens, so at the recipe's max_len nearly every row is full
# anyway; at 1000 random batches would be ~72% real tokens, and only bucketing keeps it high.
@pytest.mark.parametrize("max_len", [400, 1000])
def test_classification_dataset_bucketing_keeps_padding_small(encoded_train_reviews, max_len):
    full_id_lists, labels = encoded_train_reviews
    id_lists = truncate(full_id_lists, max_len)
    dataset = classification_dataset(id_lists, labels, batch_size=32, shuffle=True).epochs(0, 1)
    padded = sum(int(np.prod(ids.shape)) for ids, _ in dataset)
    real_share = sum(len(ids) for ids in id_lists) / padded
    assert real_share > 0.95, real_share


def test_classification_dataset_knows_its_length(encoded_reviews):
    import tensorflow as tf

    id_lists, _ = encoded_reviews
    training = classification_dataset(*encoded_reviews, batch_size=16, shuffle=True)
    dataset = training.epochs(0, 1)
    steps = int(dataset.cardinality())
    assert steps == -(-len(id_lists) // 16) == sum(1 for _ in dataset)
    assert steps != tf.data.UNKNOWN_CARDINALITY
    assert int(training.epochs(0, 3).cardinality()) == 3 * steps
    assert int(training.cardinality()) == training.steps_per_epoch == steps
    assert int(classification_dataset(*encoded_reviews, batch_size=16).cardinality()) == steps
