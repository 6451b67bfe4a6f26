"""A cache of tokenized, id-encoded pretraining corpora, so that a rerun skips tokenization.

`encode_corpus` reads a corpus with `tftune.data.read_corpus`, holds out the last documents for
validation, tokenizes the training documents, builds the vocabulary (or takes a given one) and
encodes both splits to flat int32 id streams, every document followed by `<eos>`. The result is
saved as one `.npz` file per key, and the next call with the same key loads that file instead.

The key is a sha256 over everything the result depends on: the content (never the name or the
modification time) and type of every corpus file, the tokenizer's config, `max_size` and
`min_freq` or the given vocabulary's fingerprint, `valid_fraction`, the text column, the encoding,
`CACHE_FORMAT`, and the source of the modules that read, tokenize and encode together with the
versions of the libraries behind the tokenizer, so that changed code never meets stale ids.

The cache lives in `$TFTUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/tftune`, else `~/.cache/tftune`;
`TFTUNE_CACHE_DIR` set to `""` or `off` turns it off. Files are written atomically and hold no
pickles. An unreadable cache file is tokenized again and replaced, and a cache directory that
cannot be written only means no caching: the cache never fails a run.

Example:

>>> from tftune.cache import encode_corpus
>>> from tftune.text import Tokenizer
>>> paths = ["pretrained/corpus/wikitext-2-valid.txt"]
>>> corpus = encode_corpus(paths, Tokenizer(), 0.05, max_size=20000)  # doctest: +SKIP
>>> corpus.from_cache, len(corpus.vocab), corpus.train_ids[:3]  # doctest: +SKIP
(False, 11670, array([1627,  806,    4], dtype=int32))
"""

import functools
import hashlib
import json
import os
import tempfile
import time
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

from tftune import data, open_vocab, text
from tftune.data import check_data_files, read_corpus
from tftune.inputs import file_sha256
from tftune.errors import DataError
from tftune.open_vocab import grow_vocabulary
from tftune.text import EOS_ID, Vocabulary

# Bump when the arrays stored in a cache file change.
CACHE_FORMAT = 1
CACHE_DIR_VARIABLE = "TFTUNE_CACHE_DIR"
_OFF_VALUES = ("", "off")
_ARRAYS = ("key", "vocab", "count_tokens", "counts", "train_ids", "valid_ids", "n_documents")


def split_documents(documents, valid_fraction):
    """Holds out the last `valid_fraction` of the documents (at least one) for validation."""
    if len(documents) < 2:
        raise DataError("the corpus needs at least 2 documents (one is held out for validation)")
    n_valid = min(len(documents) - 1, max(1, round(len(documents) * valid_fraction)))
    return documents[:-n_valid], documents[-n_valid:]


def cache_dir():
    """Returns the directory of the corpus cache, or None when the cache is off.

    Returns:
        `$TFTUNE_CACHE_DIR` if set, else `$XDG_CACHE_HOME/tftune`, else `~/.cache/tftune`, as a
        `Path`; None when `TFTUNE_CACHE_DIR` is empty or `off`.
    """
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured is not None:
        return None if configured.strip().lower() in _OFF_VALUES else Path(configured).expanduser()
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "tftune"


@functools.cache
def _code_fingerprint():
    """The code behind an encoded corpus: these modules' source and the tokenizer's regex engine."""
    sources = (data.__file__, text.__file__, open_vocab.__file__, __file__)
    return {
        "sources": [hashlib.sha256(Path(source).read_bytes()).hexdigest() for source in sources],
        "regex": regex.__version__,
        "unicode": unicodedata.unidata_version,
    }


def _file_sha256(path):
    # As `read_corpus` checks it (type, then a regular file): opening a FIFO would wait for a writer,
    # and /dev/zero would never end.
    check_data_files([path])
    return file_sha256(path)


def corpus_key(paths, tokenizer, valid_fraction, *, valid_paths=(), documents=None, valid_documents=None,
               max_size=None, min_freq=1, vocab=None, open_words=None, text_column="text", encoding="utf-8"):
    """Returns the cache key of an encoded corpus, a sha256 hex digest.

    Args:
        paths, tokenizer, valid_fraction, valid_paths, documents, valid_documents, max_size, min_freq, vocab,
            open_words, text_column, encoding: As for `PendingCorpus`.

    Raises:
        OSError: A corpus file cannot be read.
    """
    settings = {
        "format": CACHE_FORMAT,
        "code": _code_fingerprint(),
        # read_corpus parses a file by its suffix; its name and place do not matter.
        "files": [[Path(path).suffix.lower(), _file_sha256(path)] for path in paths],
        "valid_files": [[Path(path).suffix.lower(), _file_sha256(path)] for path in valid_paths],
        "documents": _documents_sha256(documents),
        "valid_documents": _documents_sha256(valid_documents),
        "tokenizer": tokenizer.get_config(),
        "vocab": {"max_size": max_size, "min_freq": min_freq} if vocab is None else vocab.fingerprint(),
        "open_words": None if open_words is None else open_words.fingerprint,
        "valid_fraction": valid_fraction,
        "text_column": text_column,
        "encoding": encoding,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def _documents_sha256(documents):
    if documents is None:
        return None
    return hashlib.sha256(json.dumps(list(documents), ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class EncodedCorpus:
    """A pretraining corpus as token ids.

    Args:
        vocab: The vocabulary of the ids: built from the training split, or the one given (grown with
            `open_words`).
        counts: `Counter` of the tokens of the training split, tokens outside `vocab` included.
        train_ids: int32 ids of the training documents, each followed by `<eos>`, as one stream.
        valid_ids: The same for the validation documents (the last ones of the corpus).
        n_documents: Number of documents in the corpus, both splits together.
        from_cache: Whether this was loaded from the cache rather than tokenized.
    """

    vocab: Vocabulary
    counts: Counter
    train_ids: np.ndarray
    valid_ids: np.ndarray
    n_documents: int
    from_cache: bool


def _flat_ids(vocab, token_lists):
    """One id stream of all documents, each ended by `<eos>`, as `Vocabulary.encode` does it."""
    return np.concatenate([np.array(vocab.ids(tokens) + [EOS_ID], dtype=np.int32) for tokens in token_lists])


def _joined(tokens):
    # One string instead of an array of tokens: a fixed-width unicode array would pad every
    # entry to the longest token, and a token (a run of word characters) can be very long.
    # Tokens never contain a line break.
    return np.array("\n".join(tokens))


def _array(arrays, name, kind, ndim):
    """The stored array `name`, checked for its dtype kind and number of dimensions."""
    array = arrays[name]
    if array.dtype.kind != kind or array.ndim != ndim:
        raise ValueError(f"{name} is not a {ndim}-d array of kind {kind!r}")
    return array


def _tokens(arrays, name):
    joined = _array(arrays, name, "U", 0).item()
    return joined.split("\n") if joined else []


class PendingCorpus:
    """A corpus to encode: read when created, tokenized (or loaded from the cache) by `encode`.

    Creating it does the quick part, where bad input shows up: unless the cache holds the
    result, it reads the corpus (`DataError` for a bad file, with `read_corpus`'s message) and
    splits off the validation documents. `encode` does the slow part. In between, a caller can
    check its other inputs before any time goes into tokenizing.

    Args:
        paths: Corpus files, as for `tftune.data.read_corpus`.
        tokenizer: The `Tokenizer`.
        valid_fraction: Share of the documents held out for validation, from the end.
        valid_paths: Files of held-out text to validate on instead; then every document of
            `paths` trains.
        documents: The documents in memory, instead of `paths` (then `paths` is empty).
        valid_documents: Held-out documents in memory, instead of `valid_paths`.
        max_size: Largest vocabulary to build from the training split; None with `vocab`.
        min_freq: Smallest count of a word in the built vocabulary.
        vocab: A `Vocabulary` to encode with instead of building one.
        open_words: With `vocab`, the `OpenWords` (words that have a vector) whose words in the
            training split join the vocabulary (`tftune.open_vocab`); None keeps `vocab` closed.
        text_column: Text column of `.csv`/`.tsv`/`.jsonl` corpus files.
        encoding: Text encoding of the corpus files.
        log: Called with one-line messages about the cache (whether the ids came from it, or
            why it could not be used); None for silence.
    """

    def __init__(self, paths, tokenizer, valid_fraction, *, valid_paths=(), documents=None, valid_documents=None,
                 max_size=None, min_freq=1, vocab=None, open_words=None, text_column="text", encoding="utf-8",
                 log=None):
        if (max_size is None) == (vocab is None):
            raise ValueError("give either max_size, to build the vocabulary, or vocab")
        self.paths = list(paths)
        self.tokenizer = tokenizer
        self.valid_fraction = valid_fraction
        self.valid_paths = list(valid_paths)
        self.documents = documents
        self.valid_documents = valid_documents
        self.max_size = max_size
        self.min_freq = min_freq
        self.vocab = vocab
        self.open_words = open_words
        self.text_column = text_column
        self.encoding = encoding
        self._log = log or (lambda message: None)
        self.directory = cache_dir()
        self.file = None
        if self.directory is not None:
            try:
                key = corpus_key(self.paths, tokenizer, valid_fraction, valid_paths=self.valid_paths,
                                 documents=documents, valid_documents=valid_documents, max_size=max_size, min_freq=min_freq, vocab=vocab, open_words=open_words,
                                 text_column=text_column, encoding=encoding)
            except OSError:
                pass  # a file that cannot be read: read_corpus below says why, as it always did
            else:
                self.file = self.directory / f"corpus-{key}.npz"
        self._splits = None
        # os.path.exists is False on any error, such as a cache path below a regular file.
        if self.file is None or not os.path.exists(self.file):
            self._splits = self._read()

    def _read(self):
        documents = self._documents(self.paths, self.documents)
        if self.valid_paths or self.valid_documents is not None:
            held_out = self._documents(self.valid_paths, self.valid_documents)
            return (documents, held_out), len(documents) + len(held_out)
        return split_documents(documents, self.valid_fraction), len(documents)

    def _documents(self, paths, in_memory):
        return list(in_memory) if in_memory is not None else read_corpus(paths, self.text_column, self.encoding)

    def encode(self):
        """Returns the `EncodedCorpus`, from the cache or tokenized and then cached."""
        if self._splits is None:
            corpus = self._load()
            if corpus is not None:
                self._log(f"corpus: token ids from the cache {self.file}")
                return corpus
            self._splits = self._read()
        started = time.perf_counter()
        corpus = self._tokenize()
        seconds = time.perf_counter() - started
        self._log(f"corpus: tokenized in {seconds:.1f} s, {self._save(corpus)}")
        return corpus

    def _tokenize(self):
        (train_docs, valid_docs), n_documents = self._splits
        train_tokens = [self.tokenizer.tokenize(doc) for doc in train_docs]
        counts = Counter(token for tokens in train_tokens for token in tokens)
        vocab = self.vocab
        if vocab is None:
            vocab = Vocabulary.build(train_tokens, self.max_size, self.min_freq)
        elif self.open_words is not None:
            vocab = grow_vocabulary(vocab, self.open_words.new_words(counts, vocab))
        return EncodedCorpus(
            vocab=vocab,
            counts=counts,
            train_ids=_flat_ids(vocab, train_tokens),
            valid_ids=_flat_ids(vocab, map(self.tokenizer.tokenize, valid_docs)),
            n_documents=n_documents,
            from_cache=False,
        )

    def _save(self, corpus):
        """Writes the cache file; returns what happened, for the log line."""
        if self.file is None:
            return "not cached (cache off)"
        arrays = {
            "key": np.array(self.file.stem),
            "vocab": _joined(corpus.vocab.tokens),
            "count_tokens": _joined(corpus.counts),
            "counts": np.fromiter(corpus.counts.values(), dtype=np.int64, count=len(corpus.counts)),
            "train_ids": corpus.train_ids,
            "valid_ids": corpus.valid_ids,
            "n_documents": np.array(corpus.n_documents, dtype=np.int64),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # A temporary file and a rename: readers (other runs too) never see half a file.
            descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=".corpus-", suffix=".tmp")
            try:
                with os.fdopen(descriptor, "wb") as f:
                    np.savez(f, **arrays)
                os.replace(temporary, self.file)
            finally:
                Path(temporary).unlink(missing_ok=True)
        except OSError as error:
            return f"not cached: cannot write {self.directory} ({error.strerror or error})"
        return f"cached in {self.file}"

    def _load(self):
        """The cached corpus, or None (and one log line) when the file cannot be used."""
        try:
            with np.load(self.file, allow_pickle=False) as arrays:
                return self._from_arrays(arrays)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            self._log(f"corpus: ignoring unreadable cache file {self.file} ({reason}); tokenizing again")
            return None

    def _from_arrays(self, arrays):
        if sorted(arrays.files) != sorted(_ARRAYS):
            raise ValueError(f"holds {', '.join(sorted(arrays.files))}")
        if _array(arrays, "key", "U", 0).item() != self.file.stem:
            raise ValueError("written for another key")
        # A grown vocabulary is the stored one; the key guarantees that it extends the given one.
        vocab = self.vocab if self.vocab is not None and self.open_words is None else Vocabulary(_tokens(arrays, "vocab"))
        count_tokens, counts = _tokens(arrays, "count_tokens"), _array(arrays, "counts", "i", 1)
        if len(counts) != len(count_tokens):
            raise ValueError("token counts do not match their tokens")
        ids = {name: _array(arrays, name, "i", 1) for name in ("train_ids", "valid_ids")}
        for name, values in ids.items():
            if values.dtype != np.int32 or not values.size or values.min() < 0 or values.max() >= len(vocab):
                raise ValueError(f"{name} is not a non-empty stream of int32 ids in the vocabulary")
        return EncodedCorpus(
            vocab=vocab,
            counts=Counter(dict(zip(count_tokens, counts.tolist()))),
            train_ids=ids["train_ids"],
            valid_ids=ids["valid_ids"],
            n_documents=int(_array(arrays, "n_documents", "i", 0)),
            from_cache=True,
        )


def encode_corpus(paths, tokenizer, valid_fraction, **options):
    """Reads, splits, tokenizes and encodes a pretraining corpus, or loads it from the cache.

    Args:
        paths: Corpus files, as for `tftune.data.read_corpus`.
        tokenizer: The `Tokenizer`.
        valid_fraction: Share of the documents held out for validation, from the end.
        **options: `max_size` and `min_freq` to build the vocabulary, or `vocab` to encode with;
            `text_column`, `encoding` and `log`, as for `PendingCorpus`.

    Returns:
        An `EncodedCorpus`.

    Raises:
        DataError: A corpus file is missing, unreadable or malformed, or holds fewer than 2
            documents.
    """
    return PendingCorpus(paths, tokenizer, valid_fraction, **options).encode()
