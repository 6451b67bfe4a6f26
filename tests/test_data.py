"""Tests of tftune.data: file readers and their one-line errors, LM windows, classification batches."""

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tftune.data import (
    check_input_file,
    classification_dataset,
    lm_dataset,
    lm_windows,
    read_corpus,
    read_labeled,
    stratified_holdout,
    truncate,
)
from tftune.errors import DataError

REPO = Path(__file__).resolve().parents[1]
REVIEWS = REPO / "pretrained" / "movie-reviews"
CORPUS = REPO / "pretrained" / "corpus" / "wikitext-2-valid.txt"
WORD2VEC = REPO / "pretrained" / "word2vec-googlenews-300d-top5k.bin"


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["text"], row["label"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reviews():
    """Six real (text, label) rows of both classes (the file is sorted by label)."""
    rows = read_rows(REVIEWS / "valid.csv")
    return rows[:3] + rows[-3:]


@pytest.fixture(scope="module")
def paragraphs():
    """Eight real non-blank lines of the shipped LM corpus."""
    lines = [line for line in CORPUS.read_text(encoding="utf-8").split("\n") if line.strip()]
    return lines[:8]


def write_table(path, rows, header=("text", "label")):
    """Writes rows as CSV, TSV or JSONL, depending on the suffix of `path`."""
    path = Path(path)
    if path.suffix == ".jsonl":
        lines = [json.dumps(dict(zip(header, row)), ensure_ascii=False) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writerow(header)
            writer.writerows(rows)
    return path


def one_line_error(call, path, *fragments):
    """Runs `call`, expecting a DataError whose single line names `path` and has every fragment."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# === Readers: valid files ===


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_read_labeled_reads_every_format(tmp_path, reviews, suffix):
    path = write_table(tmp_path / f"reviews{suffix}", reviews)
    texts, labels = read_labeled(path)
    assert texts == [text for text, _ in reviews]
    assert labels == [label for _, label in reviews]


def test_read_labeled_custom_columns_ignores_other_columns(tmp_path, reviews):
    rows = [(str(i), label, text) for i, (text, label) in enumerate(reviews)]
    header = ("id", "sentiment", "review")
    for suffix in (".csv", ".jsonl"):
        path = write_table(tmp_path / f"reviews{suffix}", rows, header)
        texts, labels = read_labeled(path, text_column="review", label_column="sentiment")
        assert (texts, labels) == ([text for text, _ in reviews], [label for _, label in reviews])


def test_read_labeled_strips_labels_and_skips_blank_rows(tmp_path, reviews):
    (text_a, label_a), (text_b, label_b) = reviews[0], reviews[-1]
    path = write_table(tmp_path / "reviews.csv", [(text_a, f" {label_a} "), ("", ""), (text_b, f"{label_b}\t")])
    assert read_labeled(path) == ([text_a, text_b], [label_a, label_b])


def test_read_labeled_keeps_line_breaks_inside_fields(tmp_path, reviews):
    # A quoted CSV field may span lines; JSON strings may hold U+2028 unescaped. Neither ends a row.
    text, label = reviews[0]
    texts = [text.replace(" . ", " .\n", 1), text.replace(" , ", " \u2028 ", 1), "form\x0cfeed " + text]
    for suffix in (".csv", ".jsonl"):
        path = write_table(tmp_path / f"reviews{suffix}", [(t, label) for t in texts])
        assert read_labeled(path) == (texts, [label] * 3)


def test_read_labeled_ignores_a_byte_order_mark(tmp_path, reviews):
    # "CSV UTF-8" files saved by spreadsheet programs start with one.
    path = write_table(tmp_path / "reviews.csv", reviews)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_labeled(path)[0][0] == reviews[0][0]


def test_read_corpus_txt_is_one_document_per_non_blank_line(tmp_path, paragraphs):
    path = tmp_path / "corpus.txt"
    windows_lines = "\r\n".join(paragraphs[4:]) + "\r\n"
    path.write_text("\n".join(paragraphs[:4]) + "\n\n   \n" + windows_lines, encoding="utf-8", newline="")
    assert read_corpus([path]) == paragraphs


def test_read_corpus_concatenates_files_and_reads_text_columns(tmp_path, paragraphs, reviews):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    csv_file = write_table(tmp_path / "reviews.csv", reviews)
    jsonl = write_table(tmp_path / "reviews.jsonl", reviews[:2])
    texts = [text for text, _ in reviews]
    assert read_corpus([txt, csv_file, jsonl]) == paragraphs + texts + texts[:2]


def test_read_corpus_custom_text_column(tmp_path, reviews):
    path = write_table(tmp_path / "reviews.tsv", [(label, text) for text, label in reviews], ("label", "body"))
    assert read_corpus([path], text_column="body") == [text for text, _ in reviews]
    one_line_error(lambda: read_corpus([path]), path, "no text column 'text'", "label, body")


# === Readers: one-line errors that name the file ===


def test_missing_file(tmp_path):
    path = tmp_path / "reviews.csv"
    one_line_error(lambda: read_labeled(path), path, "no such file")
    one_line_error(lambda: read_corpus([path]), path, "no such file")


def test_missing_file_among_several_is_the_one_named(tmp_path, paragraphs):
    present = tmp_path / "present.txt"
    present.write_text(paragraphs[0], encoding="utf-8")
    missing = tmp_path / "missing.txt"
    message = one_line_error(lambda: read_corpus([present, missing]), missing, "no such file")
    assert str(present) not in message


def test_directory(tmp_path):
    path = tmp_path / "reviews.csv"
    path.mkdir()
    one_line_error(lambda: read_labeled(path), path, "directory")


def test_named_pipe_is_refused_without_being_opened(tmp_path):
    path = tmp_path / "reviews.csv"
    os.mkfifo(path)  # no writer: opening it would wait forever
    one_line_error(lambda: read_labeled(path), path, "is a named pipe (FIFO), expected a regular file")
    one_line_error(lambda: read_corpus([path]), path, "is a named pipe (FIFO), expected a regular file")


def test_endless_device_is_refused_without_being_read():
    path = Path("/dev/zero")
    one_line_error(lambda: check_input_file(path), path, "is a character device, expected a regular file")


@pytest.mark.parametrize("content", ["", " \n\t\r\n  \n"], ids=["empty", "whitespace"])
@pytest.mark.parametrize("name", ["corpus.txt", "reviews.csv", "reviews.jsonl"])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    one_line_error(lambda: read_corpus([path]), path, "empty")


def test_non_utf8_text_names_the_byte(tmp_path, reviews):
    text, label = reviews[0]
    data = f"text,label\n{text} cafe,{label}\n".encode("utf-8").replace(b"cafe", "café".encode("latin-1"))
    path = tmp_path / "reviews.csv"
    path.write_bytes(data)
    message = one_line_error(lambda: read_labeled(path), path, "utf-8", f"byte {data.index(0xE9)}")
    assert "--encoding" not in message  # the command line has no such option


def test_binary_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(WORD2VEC.read_bytes()[:4096])
    one_line_error(lambda: read_corpus([path]), path, "binary")


def test_text_with_nul_bytes(tmp_path, paragraphs):
    # ASCII text saved as UTF-16 is valid UTF-8, but full of NULs.
    path = tmp_path / "corpus.txt"
    path.write_bytes("\n".join(paragraphs).encode("utf-16-le"))
    one_line_error(lambda: read_corpus([path]), path, "NUL")


@pytest.mark.parametrize("role, header", [("text", ("review", "label")), ("label", ("text", "sentiment"))])
def test_csv_missing_column_names_the_header_and_columns(tmp_path, reviews, role, header):
    path = write_table(tmp_path / "reviews.csv", reviews, header)
    column = "text" if role == "text" else "label"
    one_line_error(lambda: read_labeled(path), path, f"header: no {role} column '{column}'", ", ".join(header))


def test_jsonl_missing_key_names_the_line(tmp_path, reviews):
    path = tmp_path / "reviews.jsonl"
    lines = [json.dumps({"text": t, "label": lab}) for t, lab in reviews]
    lines[2] = json.dumps({"text": reviews[2][0], "sentiment": reviews[2][1]})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    one_line_error(lambda: read_labeled(path), path, "line 3", "no label column 'label'")


def test_csv_ragged_row_names_the_line(tmp_path, reviews):
    path = write_table(tmp_path / "reviews.csv", reviews[:2] + [(*reviews[2], "extra")] + reviews[3:])
    one_line_error(lambda: read_labeled(path), path, "line 4", "3 fields", "header has 2")


def test_csv_line_numbers_count_lines_inside_quoted_fields(tmp_path, reviews):
    rows = [(reviews[0][0].replace(" , ", " ,\n"), reviews[0][1]), reviews[1], (reviews[2][0],)]
    path = write_table(tmp_path / "reviews.csv", rows)
    expected_line = path.read_text(encoding="utf-8").count("\n")  # the last line of the file
    one_line_error(lambda: read_labeled(path), path, f"line {expected_line}:", "1 fields")


def test_jsonl_invalid_line_names_the_line(tmp_path, reviews):
    path = tmp_path / "reviews.jsonl"
    good = [json.dumps({"text": t, "label": lab}) for t, lab in reviews]
    path.write_text("\n".join(good[:1] + ["", good[1][:-10]] + good[2:]) + "\n", encoding="utf-8")
    one_line_error(lambda: read_labeled(path), path, "line 3", "invalid JSON")


def test_jsonl_non_object_line_names_the_line(tmp_path, reviews):
    path = tmp_path / "reviews.jsonl"
    lines = [json.dumps({"text": t, "label": lab}) for t, lab in reviews]
    lines[1] = json.dumps(list(reviews[1]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    one_line_error(lambda: read_labeled(path), path, "line 2", "JSON object")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_empty_label_names_the_line(tmp_path, reviews, suffix):
    rows = list(reviews)
    rows[3] = (rows[3][0], "  ")
    path = write_table(tmp_path / f"reviews{suffix}", rows)
    line = 5 if suffix == ".csv" else 4  # the CSV header is line 1
    one_line_error(lambda: read_labeled(path), path, f"line {line}", "empty label")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("label", ["positive\nnegative", "pos\titive", "neg\x1b[31m"])
def test_label_with_a_line_break_or_control_character_names_the_line(tmp_path, reviews, suffix, label):
    rows = list(reviews)
    rows[3] = (rows[3][0], label)
    path = write_table(tmp_path / f"reviews{suffix}", rows)
    line = 5 + label.count("\n") if suffix == ".csv" else 4  # a CSV row is named by the line it ends on
    one_line_error(lambda: read_labeled(path), path, f"line {line}", repr(label), "control character")


def test_header_without_rows(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n", encoding="utf-8")
    one_line_error(lambda: read_labeled(path), path, "no examples")


@pytest.mark.parametrize("name, shown", [("reviews.xlsx", "'.xlsx'"), ("reviews", "'(none)'")])
def test_unsupported_suffix(tmp_path, name, shown):
    path = tmp_path / name
    path.write_text("text,label\ngood,pos\n", encoding="utf-8")
    one_line_error(lambda: read_labeled(path), path, "unsupported", shown, ".csv")
    one_line_error(lambda: read_corpus([path]), path, "unsupported", shown, ".txt")


def test_labeled_data_cannot_be_txt(tmp_path, paragraphs):
    path = tmp_path / "reviews.txt"
    path.write_text(paragraphs[0], encoding="utf-8")
    one_line_error(lambda: read_labeled(path), path, "unsupported", "'.txt'")


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


# === The automatic hold-out ===


def test_stratified_holdout_keeps_every_class_on_both_sides():
    # 40 classes of 2 to 6 examples: a plain 10% draw would leave most classes out of validation
    # and could take a class's only training examples.
    labels = [f"class-{c}" for c in range(40) for _ in range(2 + c % 5)]
    held, kept = stratified_holdout(labels, 0.1, seed=3)
    assert sorted(held + kept) == list(range(len(labels)))
    assert {labels[i] for i in held} == {labels[i] for i in kept} == set(labels)
    assert (held, kept) == stratified_holdout(labels, 0.1, seed=3)
    assert held != stratified_holdout(labels, 0.1, seed=4)[0]


def test_stratified_holdout_leaves_a_class_of_one_in_training():
    labels = ["common"] * 20 + ["rare"]
    held, kept = stratified_holdout(labels, 0.1, seed=0)
    assert [labels[i] for i in held] == ["common", "common"]
    assert labels.index("rare") in kept


def labeled_files(tmp_path, train_rows, valid_rows=None):
    """The recipe's fine-tuning settings, and the labeled data written to files."""
    from tftune.inputs import labeled_data
    from tftune.recipe import load_recipe

    train = write_table(tmp_path / "train.csv", train_rows)
    valid = write_table(tmp_path / "valid.csv", valid_rows) if valid_rows else None
    return load_recipe("gru-glove").finetune, labeled_data(train, valid)


def test_load_labeled_splits_holds_out_every_class(tmp_path, reviews):
    from tftune.labeled_task import load_labeled_splits

    rows = [(f"{text} ({number})", f"topic-{number % 12}") for number, (text, _) in enumerate(reviews * 10)]
    splits = load_labeled_splits(*labeled_files(tmp_path, rows))
    assert set(splits.valid[1]) == set(splits.train[1]) == set(splits.labels)
    assert len(splits.labels) == 12


def test_a_valid_label_never_seen_in_training_blames_the_valid_file(tmp_path, reviews):
    from tftune.labeled_task import load_labeled_splits

    settings, data = labeled_files(tmp_path, reviews, [(reviews[0][0], "neutral")])
    message = one_line_error(lambda: load_labeled_splits(settings, data), tmp_path / "valid.csv", "'neutral'")
    assert "train.csv" not in message
