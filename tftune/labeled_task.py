"""The labeled task of a fine-tuning run: its splits, the open vocabulary, and the batches.

`prepare_task` reads train/valid/test (`tftune.inputs.LabeledData`), holds out validation
examples when none are given, grows the pretrain run's vocabulary with the task's words that
have a vector (`vocab.open`), and batches each split by length (`tftune.batches.classification_dataset`).

Example:

>>> from tftune.labeled_task import balanced_class_weights
>>> balanced_class_weights([0, 0, 0, 1], 2)
{0: 0.6666666666666666, 1: 2.0}
"""

import dataclasses
from collections import Counter

import numpy as np

from tftune.batches import classification_dataset, truncate
from tftune.data import stratified_holdout
from tftune.embeddings import load_vectors
from tftune.errors import DataError
from tftune.open_vocab import OpenWords, grow_vocabulary, measure_growth
from tftune.run_setup import log
from tftune.text import Vocabulary


@dataclasses.dataclass
class LabeledSplits:
    labels: list
    train: tuple
    valid: tuple
    test: tuple | None


@dataclasses.dataclass
class OpenedVocabulary:
    """A pretrain run's vocabulary, grown with the words of the task's text that have a vector.

    Args:
        vocab: the grown vocabulary (the run's own when nothing was added).
        added: the words added, in id order.
        vectors: the `KeyedVectors` they came from (None with `vocab.open = false`).
        growth: the token coverage before and after (`tftune.open_vocab.Growth`), or None.
    """

    vocab: Vocabulary
    added: list
    vectors: object
    growth: object


@dataclasses.dataclass
class LabeledTask:
    """The task as the classifiers read it.

    Attributes:
        labels: class names, in output order.
        opened: the vocabulary (`OpenedVocabulary`) and its growth.
        tokenizer: the pretrain runs' tokenizer.
        data: `{"train", "valid", "class_weight"}`: the datasets and optional class weights.
        test_data: the test dataset, or None.
    """

    labels: list
    opened: OpenedVocabulary
    tokenizer: object
    data: dict
    test_data: object


def prepare_task(recipe, members, data):
    """Reads the labeled splits, opens the vocabulary to their words, and batches them."""
    settings = recipe.finetune
    tokenizer = members[0].tokenizer
    splits = load_labeled_splits(settings, data)
    opened = open_vocabulary(recipe, members[0].vocab, tokenizer, splits.train[0] + splits.valid[0])
    label_index = {label: i for i, label in enumerate(splits.labels)}

    def dataset(split, shuffle=False):
        texts, labels = split
        ids = truncate(opened.vocab.encode(texts, tokenizer), settings.max_len)
        targets = [label_index[label] for label in labels]
        return classification_dataset(ids, targets, settings.batch_size, shuffle=shuffle, seed=settings.seed)

    data = {"train": dataset(splits.train, shuffle=True), "valid": dataset(splits.valid), "class_weight": None}
    if settings.class_weight == "balanced":
        train_labels = [label_index[label] for label in splits.train[1]]
        data["class_weight"] = balanced_class_weights(train_labels, len(splits.labels))
    log(
        f"classes: {', '.join(splits.labels)}; {len(splits.train[0]):,} train, "
        f"{len(splits.valid[0]):,} valid, {len(splits.test[0]) if splits.test else 0:,} test examples"
    )
    return LabeledTask(splits.labels, opened, tokenizer, data, dataset(splits.test) if splits.test else None)


def load_labeled_splits(settings, data):
    """Reads train/valid/test (`tftune.inputs.LabeledData`); holds out part of train when there is no valid."""
    train = data.read(data.train)
    if data.valid is not None:
        valid = data.read(data.valid)
    else:
        held, kept = stratified_holdout(train[1], settings.valid_fraction, settings.seed)
        if not held:
            raise DataError(f"{data.train.origin}: no class has 2 examples, so none can be held out for validation; "
                            "give validation examples (--valid)")
        valid = tuple([rows[i] for i in held] for rows in train)
        train = tuple([rows[i] for i in kept] for rows in train)
    test = data.read(data.test) if data.test is not None else None
    labels = sorted(set(train[1]))
    if len(labels) < 2:
        raise DataError(f"{data.train.origin}: only one class ({labels[0]!r}); a classifier needs at least 2")
    for name, split, given in (("valid", valid, data.valid), ("test", test, data.test)):
        if split is None:
            continue
        unseen = sorted(set(split[1]) - set(labels))
        if unseen:
            raise DataError(f"{(given or data.train).origin}: {name} label(s) {', '.join(map(repr, unseen[:5]))} "
                            "never seen in training")
    return LabeledSplits(labels, train, valid, test)


def open_vocabulary(recipe, vocab, tokenizer, texts):
    """Grows `vocab` with the words of `texts` that have a vector (`vocab.open`), and logs the coverage."""
    if not recipe.vocab.open:
        return OpenedVocabulary(vocab, [], None, None)
    vectors = load_vectors(recipe.embeddings.path, recipe.embeddings.format)
    counts = Counter(token for text in texts for token in tokenizer.tokenize(text))
    added = OpenWords(vectors).new_words(counts, vocab)
    growth = measure_growth(counts, vocab, added)
    log(growth.summary())
    return OpenedVocabulary(grow_vocabulary(vocab, added), added, vectors, growth)


def balanced_class_weights(label_ids, n_classes):
    """`examples / (classes * examples of the class)` per class, as Keras' `class_weight` takes it."""
    counts = np.bincount(np.asarray(label_ids, dtype="int64"), minlength=n_classes)
    return {index: len(label_ids) / (n_classes * count) for index, count in enumerate(counts) if count}
