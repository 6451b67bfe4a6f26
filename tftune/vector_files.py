"""Reading vectors files: recognizing a format from its first bytes, the npy manifest, gensim's
readers, and naming the line or record that breaks a file.

`tftune.embeddings.load_vectors` is the way in; every problem found here raises
`EmbeddingsError` through the `fail(cause)` it passes, so each message names the file and format.

Example:

>>> from tftune.vector_files import sniff_format
>>> sniff_format(b"the 0.1 0.2\nof 0.3 0.4\n")
'glove'
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tftune.errors import EmbeddingsError

if TYPE_CHECKING:
    import numpy as np
    from gensim.models import KeyedVectors

FORMAT_NAMES = {
    "glove": "GloVe text (no header)",
    "word2vec": "word2vec text (with a 'count dim' header)",
    "word2vec-binary": "word2vec binary",
    "keyedvectors": "a gensim KeyedVectors file",
    "npy": "an npy manifest (words and matrix files)",
}

_HEAD_BYTES = 1 << 16

HEADER = re.compile(rb"\s*(\d+)\s+(\d+)\s*")

# `PACKAGE:PATH` in an npy manifest: a file inside an installed Python package.
_PACKAGE_FILE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):(.+)")


def check_finite(kv: KeyedVectors, path: Path, fmt: str, fail: Callable[[str], EmbeddingsError]) -> None:
    """Refuses NaN or infinite values, which would only surface later as a NaN training loss."""
    import numpy as np

    finite_rows = np.isfinite(kv.vectors).all(axis=1)
    if finite_rows.all():
        return
    row = int(np.argmin(finite_rows))
    word = kv.index_to_key[row]
    value = kv.vectors[row][~np.isfinite(kv.vectors[row])][0]
    where = f"record {row + 1:,}" if fmt in ("word2vec-binary", "keyedvectors", "npy") else _text_line_of(path, word, fmt)
    raise fail(f"{where} (word {word!r}) has a non-finite value ({value}); the file is corrupt")


def _text_line_of(path: Path, word: str, fmt: str) -> str:
    """The line of a text vectors file that holds `word` (read again only on this error path)."""
    from gensim import utils as gensim_utils

    prefix = word.encode("utf-8") + b" "
    with gensim_utils.open(os.fspath(path), "rb") as fin:
        for line_no, raw in enumerate(fin, start=1):
            if raw.startswith(prefix) and not (fmt == "word2vec" and line_no == 1):
                return f"line {line_no:,}"
    return "a line"


def read_head(path: Path, fail: Callable[[str], EmbeddingsError]) -> bytes:
    """The first bytes of the (decompressed) file."""
    from gensim import utils as gensim_utils

    try:
        with gensim_utils.open(os.fspath(path), "rb") as fin:
            return fin.read(_HEAD_BYTES)
    except (OSError, EOFError) as error:  # unreadable, or a corrupt .gz / .bz2
        reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)
        raise fail(f"cannot read the file ({reason})") from None


def sniff_format(head: bytes) -> str | None:
    """Guesses the format from the first bytes; None if it cannot tell."""
    if head.startswith(b"\x80"):  # pickle protocol 2+, as written by KeyedVectors.save
        return "keyedvectors"
    if _is_npy_manifest(head):
        return "npy"
    first, _, rest = head.partition(b"\n")
    if HEADER.fullmatch(first):
        second = rest.partition(b"\n")[0]
        if not second:
            return None
        return "word2vec" if _is_text_row(second) else "word2vec-binary"
    return "glove" if _is_text_row(first) else None


def _is_text_row(line: bytes) -> bool:
    """Whether a line reads as `word value ...`; raw binary floats never decode and parse so."""
    try:
        fields = line.decode("utf-8").split()
    except UnicodeDecodeError:
        return False
    return len(fields) >= 2 and _is_number(fields[1])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_npy_manifest(head: bytes) -> bool:
    try:
        manifest = tomllib.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return {"words", "matrix"} <= manifest.keys()


def read_manifest(path: Path, fail: Callable[[str], EmbeddingsError]) -> dict:
    try:
        manifest = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise fail(f"not a TOML manifest ({one_line(error)})") from None
    for key in ("words", "matrix"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise fail(f"the manifest needs a '{key}' file name (a non-empty string)")
    return manifest


def _manifest_file(path: Path, manifest: dict, key: str, fail: Callable[[str], EmbeddingsError]) -> Path:
    """A file the manifest names: relative to the manifest, or `PACKAGE:PATH` inside an installed package."""
    name = manifest[key]
    packaged = _PACKAGE_FILE.fullmatch(name)
    if packaged is None:
        return path.parent / name
    package, inside = packaged.groups()
    # find_spec locates the package without importing (and so without running) it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        requirement = manifest.get("requires", package)
        raise fail(f"{key}: the Python package '{package}' is not installed (pip install {requirement})")
    return Path(next(iter(spec.submodule_search_locations))) / inside


def npy_matrix(path: Path, manifest: dict, fail: Callable[[str], EmbeddingsError]) -> np.ndarray:
    import numpy as np

    matrix_path = _manifest_file(path, manifest, "matrix", fail)
    try:
        matrix = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise fail(f"matrix: {matrix_path} does not exist") from None
    except (OSError, ValueError) as error:
        raise fail(f"matrix: {matrix_path} is not a readable .npy file ({one_line(error)})") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise fail(f"matrix: {matrix_path} holds a {matrix.dtype} array of shape {matrix.shape}, not [words, dim] floats")
    return matrix


def load_npy(path: Path, fail: Callable[[str], EmbeddingsError]) -> KeyedVectors:
    from gensim.models import KeyedVectors

    manifest = read_manifest(path, fail)
    matrix = npy_matrix(path, manifest, fail)
    words_path = _manifest_file(path, manifest, "words", fail)
    try:
        words = words_path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise fail(f"words: {words_path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"words: {words_path} is not readable UTF-8 text ({one_line(error)})") from None
    if words and words[-1] == "":
        words.pop()
    if len(words) != len(matrix):
        raise fail(f"words: {words_path} has {len(words):,} words but the matrix has {len(matrix):,} rows")
    key_to_index = {}
    for index, word in enumerate(words):
        if not word or word != word.strip() or " " in word:
            raise fail(f"words: {words_path} line {index + 1}: {word!r} is not a word (empty or with spaces)")
        if key_to_index.setdefault(word, index) != index:
            raise fail(f"words: {words_path} line {index + 1}: {word!r} repeats line {key_to_index[word] + 1}")
    kv = KeyedVectors(matrix.shape[1], count=0, dtype=matrix.dtype)
    kv.index_to_key, kv.key_to_index, kv.vectors = words, key_to_index, matrix
    return kv


def load_keyedvectors(path: Path, fail: Callable[[str], EmbeddingsError]) -> KeyedVectors:
    from gensim.models import KeyedVectors

    name = os.fspath(path)
    # gensim cannot memory-map arrays stored compressed next to a .gz / .bz2 file.
    mmap = None if name.endswith((".gz", ".bz2")) else "r"
    try:
        loaded = KeyedVectors.load(name, mmap=mmap)
    except FileNotFoundError as error:
        raise fail(f"its companion file {error.filename} is missing; keep it next to the main file") from None
    # Unpickling arbitrary bytes can fail with almost any exception type.
    except Exception as error:
        raise fail(f"not a gensim KeyedVectors file ({type(error).__name__}: {one_line(error)})") from None
    # A saved Word2Vec / FastText model carries its vectors in `.wv`.
    kv = getattr(loaded, "wv", loaded)
    if not isinstance(kv, KeyedVectors):
        raise fail(f"it holds a {type(loaded).__name__}, not KeyedVectors")
    return kv


def load_word2vec_format(
    path: Path, fmt: str, head: bytes, fail: Callable[[str], EmbeddingsError]
) -> KeyedVectors:
    from gensim.models import KeyedVectors

    try:
        return KeyedVectors.load_word2vec_format(
            os.fspath(path), binary=fmt == "word2vec-binary", no_header=fmt == "glove"
        )
    except EOFError:
        header = HEADER.fullmatch(head.partition(b"\n")[0])
        announced = f"the {int(header[1]):,} vectors its header announces" if header else "all vectors"
        raise fail(f"the file ends before {announced} (truncated?)") from None
    # gensim reports bad rows as ValueError (UnicodeDecodeError included) in various forms.
    except ValueError as error:
        cause = None if fmt == "word2vec-binary" else _find_bad_text_row(path, has_header=fmt == "word2vec")
        if fmt == "word2vec-binary" and isinstance(error, UnicodeDecodeError):
            cause = f"a word is not valid UTF-8 ({error.reason}); corrupt file?"
        raise fail(cause or one_line(error)) from None


def _find_bad_text_row(path: Path, has_header: bool) -> str | None:
    """Describes the first row gensim cannot read, reading lines the way gensim does."""
    from gensim import utils as gensim_utils

    expected = None
    with gensim_utils.open(os.fspath(path), "rb") as fin:
        for line_no, raw in enumerate(fin, start=1):
            truncated = "" if raw.endswith(b"\n") else "; the file seems truncated"
            if has_header and line_no == 1:
                header = HEADER.fullmatch(raw)
                if header is None:
                    return "line 1 is not a 'count dim' header (GloVe files have none: use format 'glove')"
                expected = int(header[2])
                continue
            declared = has_header and line_no == 2
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"line {line_no} is not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                    "a binary file, or text in another encoding?"
                )
            values = text.rstrip().split(" ")[1:]
            if "" in values:
                return f"line {line_no} has repeated spaces; values must be separated by single spaces"
            if expected is None:
                expected = len(values)
            if len(values) != expected:
                if declared and not truncated:
                    return f"line 2 has {len(values)} values, but the header (line 1) declares {expected} dimensions"
                return f"line {line_no} has {len(values)} values, expected {expected}{truncated or ' (ragged rows)'}"
            bad = next((value for value in values if not _is_number(value)), None)
            if bad is not None:
                return f"line {line_no}: {bad[:20]!r} is not a number{truncated}"
    return None


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
