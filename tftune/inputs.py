"""What a run trains on: its data, given as files or in memory, and their fingerprints.

Data are arguments of a run, not recipe settings. On the command line they are files
(`--corpus`/`--valid` for pretrain, `--train`/`--valid`/`--test` for finetune); in Python also
lists of texts (and labels), a pandas DataFrame or a `tf.data.Dataset`, used in memory as they
are. Nothing here imports pandas or TensorFlow: a DataFrame or a Dataset is recognised by what it
has, so neither is imported for data given as lists or files.

Each input has a fingerprint, recorded in the run's `run.json` and its checkpoint: a file's path
as given, its size and sha256; for data in memory, the number of examples and a sha256 of their
content. `--resume` compares them, so a run never continues on other data.

Example:

```python
corpus = corpus_data(["first document", "second one"])
labeled = labeled_data(train="task/train.csv", valid=(["a text"], ["pos"]))
labeled.fingerprints()  # {"train": [{"path": "task/train.csv", "size": ..., "sha256": ...}], "valid": {...}}
```
"""

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence

from tftune.errors import DataError, RunError


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a run: files read as they are, or examples in memory.

    Attributes:
        role: what it is for, the flag's name: "corpus", "valid", "train" or "test".
        paths: the files, as given (none for data in memory).
        texts: the texts in memory, or None for files.
        labels: the labels of labeled texts in memory, else None.
    """

    role: str
    paths: tuple = ()
    texts: tuple | None = None
    labels: tuple | None = None

    @property
    def in_memory(self):
        return self.texts is not None

    @property
    def origin(self):
        """What one-line errors about its content start with: the file, or `train examples`."""
        return self.paths[0] if len(self.paths) == 1 else f"{self.role} examples"

    def describe(self):
        """How messages name it: `--train file task/train.csv`, or `train examples (in memory)`."""
        if self.in_memory:
            return f"{self.role} examples (in memory)"
        return f"--{self.role} file{'s' if len(self.paths) > 1 else ''} {', '.join(self.paths)}"

    def content_sha256(self):
        """A sha256 of the examples in memory (texts, then labels), the same in every process."""
        text = json.dumps([list(self.texts), None if self.labels is None else list(self.labels)], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def fingerprint(self):
        """`[{"path", "size", "sha256"}, ...]` for files; `{"examples", "sha256"}` for data in memory."""
        if self.in_memory:
            return {"examples": len(self.texts), "sha256": self.content_sha256()}
        return [file_fingerprint(path) for path in self.paths]


def file_fingerprint(path):
    """`{"path": as given, "size": bytes, "sha256": hex}` of one input file."""
    from tftune.data import check_input_file

    check_input_file(path)  # a FIFO or a device would never end
    try:
        return {"path": str(path), "size": os.path.getsize(path), "sha256": file_sha256(path)}
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def file_sha256(path):
    """The sha256 hex digest of a regular file's bytes, read once per process while the file is unchanged.

    The run's fingerprints and the corpus cache's key both hash every input file; the second asks
    for a digest the first has already computed.

    Example:

    >>> file_sha256("pretrained/authors/train.csv") == file_sha256("pretrained/authors/train.csv")  # doctest: +SKIP
    True
    """
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(real_path, inode, size, mtime_ns):
    """`file_sha256` of the file as it is at (inode, size, mtime): a changed file is another key."""
    with open(real_path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class _Data:
    """What `CorpusData` and `LabeledData` share: their inputs, fingerprints and files."""

    def inputs(self):
        return [item for item in (getattr(self, field.name) for field in dataclasses.fields(self))
                if isinstance(item, Input)]

    def files(self):
        """`(label, path)` of every input file, for `tftune.output_paths.check_output_paths`."""
        return [(f"--{item.role} file", path) for item in self.inputs() for path in item.paths]

    def reading(self):
        """How files are read: `{"text_column", "encoding"}` (and `"label_column"` for labeled data)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if isinstance(getattr(self, field.name), str)}

    def fingerprints(self):
        """`{role: fingerprint}` of every input, and `"reading"`: what `run.json` records."""
        return {**{item.role: item.fingerprint() for item in self.inputs()}, "reading": self.reading()}

    def check_unchanged(self, recorded, current=None):
        """Refuses, in one line naming the input, data that differ from the `recorded` fingerprints.

        Args:
            recorded: the fingerprints a run or checkpoint recorded.
            current: `fingerprints()`, when already computed.
        """
        current = self.fingerprints() if current is None else current
        for role in sorted(set(recorded) | set(current)):
            if _comparable(recorded.get(role)) != _comparable(current.get(role)):
                named = next((item.describe() for item in self.inputs() if item.role == role),
                             "how the files are read (columns, encoding)" if role == "reading" else f"--{role}")
                raise RunError(f"{named}: not the data the interrupted run was trained on; resume with the same "
                               "data, or start over with --force")


def _comparable(fingerprint):
    """A fingerprint without the paths: a file moved or named another way is still the same data."""
    if isinstance(fingerprint, list):
        return [(item["size"], item["sha256"]) for item in fingerprint]
    return fingerprint


@dataclasses.dataclass(frozen=True)
class CorpusData(_Data):
    """The unlabeled text of a pretrain run.

    Attributes:
        corpus: the training text (`Input` of role "corpus").
        valid: held-out text to measure perplexity on, or None (hold out the corpus' last documents).
        text_column: the text column of .csv/.tsv/.jsonl files.
        encoding: the text encoding of the files.
    """

    corpus: Input
    valid: Input | None = None
    text_column: str = "text"
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class LabeledData(_Data):
    """The labeled examples of a finetune run.

    Attributes:
        train: the training examples.
        valid: validation examples, or None (hold out part of train).
        test: test examples scored once after training, or None.
        text_column, label_column: the columns (or JSON keys) of files.
        encoding: the text encoding of the files.
    """

    train: Input
    valid: Input | None = None
    test: Input | None = None
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"

    def read(self, item):
        """`(texts, labels)` of one input: its examples in memory, or its file read."""
        if item.in_memory:
            return list(item.texts), list(item.labels)
        from tftune.data import read_labeled

        return read_labeled(item.paths[0], self.text_column, self.label_column, encoding=self.encoding)


# === From what the caller gives ===


def corpus_data(corpus, valid=None, *, text_column="text", encoding="utf-8"):
    """`CorpusData` from files, a list of documents, a pandas Series or DataFrame, or a `tf.data.Dataset`.

    Args:
        corpus: a file, a list of files (`pathlib.Path`s), or the documents in memory.
        valid: held-out text, in the same forms; None = hold out the corpus' last documents.
        text_column: the text column of files and DataFrames.
        encoding: the text encoding of files.

    Example:

    ```python
    corpus_data(["first document", "second one"]).corpus.texts  # ("first document", "second one")
    ```
    """
    if corpus is None:
        raise DataError("no corpus: give the unlabeled text to pretrain on (--corpus FILE, or texts in Python)")
    return CorpusData(_unlabeled("corpus", corpus, text_column),
                      None if valid is None else _unlabeled("valid", valid, text_column), text_column, encoding)


def labeled_data(train, valid=None, test=None, *, text_column="text", label_column="label", encoding="utf-8"):
    """`LabeledData` from files, `(texts, labels)`, pandas DataFrames or `tf.data.Dataset`s of pairs.

    Args:
        train: the training examples; required.
        valid, test: in the same forms, or None.
        text_column, label_column: the columns of files and DataFrames.
        encoding: the text encoding of files.

    Example:

    ```python
    labeled_data((["a gripping film", "dull"], ["pos", "neg"]), test="task/test.csv")
    ```
    """
    if train is None:
        raise DataError("no training data: give the labeled examples to fine-tune on "
                        "(--train FILE, or train= in Python)")
    splits = {role: None if examples is None else labeled_input(role, examples, text_column, label_column)
              for role, examples in (("train", train), ("valid", valid), ("test", test))}
    return LabeledData(**splits, text_column=text_column, label_column=label_column, encoding=encoding)


def _is_file(value):
    return isinstance(value, (str, os.PathLike))


def _is_dataset(value):
    """A `tf.data.Dataset`, recognised without importing TensorFlow."""
    return type(value).__module__.startswith("tensorflow") and hasattr(value, "as_numpy_iterator")


def _unlabeled(role, value, text_column):
    if _is_file(value):
        return Input(role, paths=(os.fspath(value),))
    if isinstance(value, Sequence) and value and all(isinstance(item, os.PathLike) for item in value):
        return Input(role, paths=tuple(os.fspath(item) for item in value))
    if hasattr(value, "columns"):  # a pandas DataFrame
        value = value[text_column]
    if _is_dataset(value):
        value = [_decoded(item) for item in value.as_numpy_iterator()]
    texts = text_list(value, f"{role} texts")
    if not texts:
        raise DataError(f"{role}: no documents")
    return Input(role, texts=tuple(texts))


def labeled_input(role, value, text_column="text", label_column="label"):
    """One labeled `Input` from a file, `(texts, labels)`, a DataFrame or a `tf.data.Dataset` of pairs."""
    if _is_file(value):
        return Input(role, paths=(os.fspath(value),))
    if hasattr(value, "columns"):  # a pandas DataFrame
        value = (value[text_column], value[label_column])
    elif _is_dataset(value):
        pairs = [tuple(_decoded(part) for part in pair) for pair in value.as_numpy_iterator()]
        if any(len(pair) != 2 for pair in pairs):
            raise DataError(f"{role}: a tf.data.Dataset of labeled examples yields (text, label) pairs")
        value = ([text for text, _ in pairs], [label for _, label in pairs])
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise DataError(f"{role}: expected (texts, labels), a DataFrame, a tf.data.Dataset or a file, "
                        f"got {type(value).__name__}")
    texts = text_list(value[0], f"{role} texts")
    labels = [str(label) for label in (value[1].tolist() if hasattr(value[1], "tolist") else list(value[1]))]
    if len(texts) != len(labels):
        raise DataError(f"{role}: {len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise DataError(f"{role}: no examples")
    return Input(role, texts=tuple(texts), labels=tuple(labels))


def _decoded(value):
    """A Dataset's element as Python: bytes decoded as UTF-8, NumPy scalars as Python ones."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError("a tf.data.Dataset holds a text that is not valid UTF-8") from None
    return value.item() if hasattr(value, "item") else value


def text_list(texts, what):
    """A list of strings from a list or a pandas Series; a clear error for anything else."""
    if hasattr(texts, "tolist"):
        texts = texts.tolist()
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DataError(f"{what}: expected a list of strings, got {type(texts).__name__}")
    bad = next((text for text in texts if not isinstance(text, str)), None)
    if bad is not None:
        raise DataError(f"{what}: expected strings only, got {type(bad).__name__} {bad!r:.60}")
    return list(texts)
