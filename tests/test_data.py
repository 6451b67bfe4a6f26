"""Tests of tftune.data: file readers and their one-line errors, the automatic hold-out."""

import csv
import json
import os
from pathlib import Path

import pytest

from tftune.data import check_input_file, read_corpus, read_labeled, stratified_holdout
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
