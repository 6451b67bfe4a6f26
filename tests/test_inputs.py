"""A run's data (`tftune.inputs`): files or texts in memory, and the fingerprints a resume compares."""

import hashlib
from pathlib import Path

import pytest

from tftune.errors import DataError, RunError
from tftune.inputs import corpus_data, labeled_data

TEXTS, LABELS = ["a gripping film", "dull and long"], ["pos", "neg"]


def test_a_file_is_fingerprinted_by_its_path_as_given_size_and_sha256(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text("one document\nanother\n", encoding="utf-8")
    [fingerprint] = corpus_data(Path("corpus.txt")).fingerprints()["corpus"]
    assert fingerprint == {"path": "corpus.txt", "size": 21,
                           "sha256": hashlib.sha256(b"one document\nanother\n").hexdigest()}


def test_texts_in_memory_are_fingerprinted_by_their_content():
    first = labeled_data((TEXTS, LABELS)).fingerprints()
    assert first == labeled_data((list(TEXTS), list(LABELS))).fingerprints()
    assert first["train"]["examples"] == 2
    assert first != labeled_data((TEXTS, ["pos", "pos"])).fingerprints()  # the labels count too


def test_other_data_on_resume_are_refused_naming_the_input(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\nfine,pos\nawful,neg\n", encoding="utf-8")
    recorded = labeled_data(str(train), valid=(TEXTS, LABELS)).fingerprints()
    # The same file under another name is the same data.
    moved = tmp_path / "moved.csv"
    moved.write_bytes(train.read_bytes())
    labeled_data(str(moved), valid=(TEXTS, LABELS)).check_unchanged(recorded)
    train.write_text("text,label\nfine,pos\nawful,pos\n", encoding="utf-8")
    with pytest.raises(RunError, match=f"^--train file {train}: not the data the interrupted run was trained on"):
        labeled_data(str(train), valid=(TEXTS, LABELS)).check_unchanged(recorded)
    with pytest.raises(RunError, match=r"^valid examples \(in memory\): not the data"):
        labeled_data(str(moved), valid=(TEXTS[::-1], LABELS)).check_unchanged(recorded)


@pytest.mark.parametrize("train, words", [
    (None, "no training data"),
    ((TEXTS, LABELS[:1]), "train: 2 texts but 1 labels"),
    (({"texts": TEXTS}), "train: expected (texts, labels)"),
    (([], []), "train: no examples"),
])
def test_bad_labeled_data_is_one_clear_error(train, words):
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        labeled_data(train)


def test_a_dataframe_and_a_dataset_give_the_data_of_the_same_lists():
    expected = labeled_data((TEXTS, LABELS)).fingerprints()
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"review": TEXTS, "label": LABELS})
    assert labeled_data(frame, text_column="review").fingerprints()["train"] == expected["train"]
    import tensorflow as tf

    assert labeled_data(tf.data.Dataset.from_tensor_slices((TEXTS, LABELS))).fingerprints() == expected
    corpus = corpus_data(tf.data.Dataset.from_tensor_slices(TEXTS))
    assert corpus.corpus.texts == tuple(TEXTS)
