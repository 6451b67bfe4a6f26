"""Readers for text and labeled files (the `tf.data` pipelines that feed training are `tftune.batches`).

Readers accept:

- `.txt`: one document per line (blank lines are skipped);
- `.csv` / `.tsv`: a header row, then one example per row (columns `text`, `label` by default);
- `.jsonl`: one JSON object per line with the same keys.

Every problem with a file raises `DataError` with one line naming the file (and the line or
column) and what is wrong. Text that does not decode in the given `encoding` (UTF-8 by default)
raises its subclass `EncodingError`, which names the byte and the encoding the file is probably in.
CSV fields may be of any size (the csv module's 128 KiB field limit is lifted).

Example:

>>> from tftune.data import read_labeled
>>> texts, labels = read_labeled("pretrained/movie-reviews/valid.csv")  # doctest: +SKIP
"""

import codecs
import csv
import io
import json
import os
import re
import stat
from pathlib import Path

from tftune.errors import DataError, EncodingError

LABELED_SUFFIXES = (".csv", ".tsv", ".jsonl")
TEXT_SUFFIXES = (".txt",) + LABELED_SUFFIXES
# Only these end a line: str.splitlines() would also break inside a document or a JSON string
# at characters such as U+2028 or form feed.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MAX_FIELD = 2**31 - 1  # the largest limit the csv module takes everywhere (a C long)


# === Readers ===


def check_encoding(encoding):
    """Raises DataError unless `encoding` names a text encoding Python knows (e.g. utf-8, latin-1)."""
    try:
        known = getattr(codecs.lookup(encoding), "_is_text_encoding", True)  # False for base64, rot13...
    except (LookupError, TypeError):
        known = False
    if not known:
        raise DataError(
            f"unknown text encoding {encoding!r}; use a Python codec name such as utf-8, latin-1, cp1252 or utf-16"
        ) from None


def decode_text(data, name, encoding):
    """`data` (bytes) as text; a DataError names `name` and says what the bytes look like instead."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise _undecodable(data, name, encoding, e) from None
    return _checked_text(text, name, encoding)


def _undecodable(data, name, encoding, error):
    """The DataError for bytes that do not decode: text in another encoding (which?), or binary."""
    wide = _is_wide(encoding)
    if not wide and data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return EncodingError(f"{name}: starts with a UTF-16 byte order mark, so it is not {encoding} text", "utf-16")
    if not wide and _looks_utf16(data):
        return EncodingError(f"{name}: has NUL bytes between the letters, so it is not {encoding} text",
                             _utf16_variant(data))
    if _looks_binary(data):
        return DataError(f"{name}: a binary file, not {encoding} text (byte {error.start} cannot be decoded)")
    where = "" if wide else f" ({_line_and_column(data, error.start)})"
    return EncodingError(f"{name}: not valid {encoding} at byte {error.start}{where}", _likely_encoding(data))


def _checked_text(text, name, encoding):
    if "\x00" in text:
        head = text[:4096].encode("utf-8", "surrogatepass")
        if not _is_wide(encoding) and _looks_utf16(head):
            raise EncodingError(f"{name}: has NUL bytes between the letters, so it is not {encoding} text",
                                _utf16_variant(head))
        raise DataError(f"{name}: contains NUL bytes; is it a binary file?")
    # Spreadsheet programs start UTF-8 CSV files with a byte order mark; it is not part of the header.
    return text.removeprefix("\ufeff")


def _is_wide(encoding):
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


# Bytes that never appear in text (all control characters but tab, line feed, form feed and carriage return).
_CONTROL_BYTES = bytes(set(range(32)) - {9, 10, 12, 13})


def _looks_binary(data):
    head = data[: 1 << 16]
    return b"\x00" in head or len(head.translate(None, _CONTROL_BYTES)) < 0.95 * len(head)


def _looks_utf16(data):
    """Mostly-ASCII text saved as UTF-16 without a byte order mark: nearly every other byte is NUL."""
    head = data[:4096]
    half = len(head) // 2
    return half > 0 and max(head[0::2].count(0), head[1::2].count(0)) > 0.9 * half


def _utf16_variant(data):
    head = data[:4096]
    return "utf-16-le" if head[1::2].count(0) >= head[0::2].count(0) else "utf-16-be"


def _likely_encoding(data):
    """cp1252 if it decodes and uses cp1252's extra characters (curly quotes, dashes); else latin-1 (decodes anything)."""
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return "latin-1"
    return "cp1252" if re.search(rb"[\x80-\x9f]", data) else "latin-1"


def _line_and_column(data, position):
    line_start = max(data.rfind(b"\n", 0, position), data.rfind(b"\r", 0, position)) + 1
    line = len(_LINE_BREAK.findall(data[:line_start].decode("latin-1"))) + 1
    return f"line {line}, column {position - line_start + 1}"


# What a path is when it is not a regular file (`stat` mode tests), for messages.
_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path):
    """What `path` is if it exists but is not a regular file ("a directory", "a named pipe (FIFO)"...),
    else None. A FIFO's reader would wait for a writer forever, and a device such as /dev/zero never
    ends, so inputs are checked with this before they are opened.

    Example:

    >>> special_file_kind("/dev/null")
    'a character device'
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing or unreadable: opening it says why
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _SPECIAL_FILES if is_kind(mode)), "a special file")


def check_input_file(path, missing_ok=False):
    """Raises DataError unless `path` is a regular file (links followed), or with `missing_ok`, is missing."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return path
        raise DataError(f"{path}: no such file")
    kind = special_file_kind(path)
    if kind is not None:
        raise DataError(f"{path}: is {kind}, expected a regular file")
    return path


def check_data_files(paths, suffixes=TEXT_SUFFIXES):
    """Fails as the readers would on a file of the wrong type, a missing file or a special file.

    Cheap (nothing is read), so that a command finds these mistakes before it imports TensorFlow.

    Args:
        paths: the data files.
        suffixes: the file types allowed, e.g. `LABELED_SUFFIXES` for labeled data.

    Example:

    >>> check_data_files(["train.csv"], LABELED_SUFFIXES)  # doctest: +SKIP
    DataError: train.csv: no such file
    """
    for path in paths:
        _check_suffix(path, suffixes)
        check_input_file(path)


def _read_lines(path, encoding):
    path = check_input_file(path)
    try:
        check_encoding(encoding)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    try:
        with open(path, encoding=encoding, newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise _undecodable(path.read_bytes(), path, encoding, e) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    text = _checked_text(text, path, encoding)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def read_stream_lines(stream, name="standard input", encoding="utf-8"):
    """Lines of a binary stream (e.g. `sys.stdin.buffer`), without their line breaks; [] if it is empty."""
    check_encoding(encoding)
    try:
        data = stream.read()
    except OSError as e:  # e.g. a closed descriptor, or a directory as standard input
        raise DataError(f"{name}: cannot read ({e.strerror or e})") from None
    lines = _split_lines(decode_text(data, name, encoding))
    return lines[:-1] if lines[-1] == "" else lines


def _split_lines(text):
    return _LINE_BREAK.split(text)


def _check_suffix(path, allowed):
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(allowed)}")
    return suffix


def _read_table(path, encoding):
    """Rows of a CSV/TSV/JSONL file as dicts, with 1-based line numbers for messages."""
    suffix = _check_suffix(path, LABELED_SUFFIXES)
    text = _read_lines(path, encoding)
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(_split_lines(text), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number}: expected a JSON object")
            rows.append((number, row))
        return rows
    # A document may be a whole book chapter: lift the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
    # newline="" lets the csv module see quoted line breaks inside fields, and count lines right.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        header = next(reader)
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {reader.line_num}: {len(row)} fields, but the header has {len(header)}"
                )
            rows.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed {suffix[1:].upper()} ({e})") from None
    return rows


def _column(path, rows, column, role):
    # Every CSV/TSV row has the header's columns, so a missing one is the header's fault.
    in_header = Path(path).suffix.lower() != ".jsonl"
    values = []
    for number, row in rows:
        if column not in row:
            available = ", ".join(map(str, row)) or "none"
            where = "header" if in_header else f"line {number}"
            raise DataError(f"{path}: {where}: no {role} column {column!r} (columns: {available})")
        value = row[column]
        values.append("" if value is None else str(value))
    return values


def read_labeled(path, text_column="text", label_column="label", encoding="utf-8"):
    """Reads `(texts, labels)` from a CSV, TSV or JSONL file.

    Args:
        path: the file.
        text_column: name of the text column (or JSON key).
        label_column: name of the label column (or JSON key).
        encoding: the file's text encoding.

    Returns:
        Two lists of strings of equal length.
    """
    rows = _read_table(path, encoding)
    if not rows:
        raise DataError(f"{path}: no examples after the header")
    texts = _column(path, rows, text_column, "text")
    labels = _column(path, rows, label_column, "label")
    for (number, _), label in zip(rows, labels):
        if not label.strip():
            raise DataError(f"{path}: line {number}: empty label")
        if not label.strip().isprintable():  # one label, one line: in predict's output and the logs
            raise DataError(f"{path}: line {number}: label {label.strip()!r} holds a line break or another "
                            "control character; a label must be one line of printable text")
    return texts, [label.strip() for label in labels]


def stratified_holdout(labels, fraction, seed):
    """Splits example indices into `(held, kept)`, holding out `fraction` of every class.

    Each class with at least 2 examples keeps at least one in both parts (a class of one stays in
    training), so validation never holds a label that training lacks, however many classes there
    are. Which examples are held out depends on `seed` alone; both parts keep a seeded random order.

    Args:
        labels: the label of each example.
        fraction: the share of each class to hold out, e.g. 0.1.
        seed: the seed of the draw.

    Example:

    >>> labels = ["a"] * 8 + ["b"] * 4 + ["c"]
    >>> held, kept = stratified_holdout(labels, 0.25, seed=0)
    >>> sorted(labels[i] for i in held), len(kept)
    (['a', 'a', 'b'], 10)
    """
    import numpy as np  # imported when used: the command line's early checks stay light

    order = np.random.default_rng(seed).permutation(len(labels))
    by_class = {}
    for index in order:
        by_class.setdefault(labels[index], []).append(index)
    held = set()
    for members in by_class.values():
        if len(members) >= 2:
            held.update(members[: min(max(1, round(len(members) * fraction)), len(members) - 1)])
    return [int(i) for i in order if i in held], [int(i) for i in order if i not in held]


def read_corpus(paths, text_column="text", encoding="utf-8"):
    """Documents of one or more corpus files: lines of `.txt`, or the text column of a labeled file."""
    documents = []
    for path in paths:
        suffix = _check_suffix(path, TEXT_SUFFIXES)
        if suffix == ".txt":
            lines = [line for line in _split_lines(_read_lines(path, encoding)) if line.strip()]
        else:
            lines = _column(path, _read_table(path, encoding), text_column, "text")
        documents.extend(lines)
    if not documents:
        raise DataError(f"{', '.join(map(str, paths))}: no documents")
    return documents
