"""Tests of tftune.cache: the tokenized corpus is cached, keyed on everything it depends on."""

import shutil
from collections import Counter

import numpy as np
import pytest

from conftest import CORPUS, PRETRAINED, balanced_rows, head_lines
from tftune.cache import cache_dir, encode_corpus, split_documents
from tftune.data import read_corpus
from tftune.errors import DataError
from tftune.text import Tokenizer, Vocabulary

AUTHORS = PRETRAINED / "authors" / "train.csv"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory of this test's own."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("TFTUNE_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def corpus(tmp_path):
    """Two files of real text: 200 WikiText-2 paragraphs and the text column of 100 authors rows."""
    return [head_lines(CORPUS, tmp_path / "wiki.txt", 200), balanced_rows(AUTHORS, tmp_path / "authors.csv", 100)]


def encode(paths, lowercase=True, min_freq=2, **options):
    """`encode_corpus` with the log lines it wrote."""
    lines = []
    result = encode_corpus(paths, Tokenizer(lowercase), 0.1, max_size=3000, min_freq=min_freq, log=lines.append,
                           **options)
    return result, lines


def assert_same(a, b):
    assert a.vocab.tokens == b.vocab.tokens
    assert a.counts == b.counts
    np.testing.assert_array_equal(a.train_ids, b.train_ids)
    np.testing.assert_array_equal(a.valid_ids, b.valid_ids)
    assert a.n_documents == b.n_documents


def test_tokenizes_as_pretraining_always_did(corpus, cache):
    result, _ = encode(corpus)
    tokenizer = Tokenizer()
    documents = read_corpus(corpus)
    train_docs, valid_docs = split_documents(documents, 0.1)
    train_tokens = [tokenizer.tokenize(doc) for doc in train_docs]
    vocab = Vocabulary.build(train_tokens, 3000, 2)
    assert result.vocab.tokens == vocab.tokens
    assert result.counts == Counter(token for tokens in train_tokens for token in tokens)
    np.testing.assert_array_equal(result.train_ids, np.concatenate(vocab.encode(train_docs, tokenizer)))
    np.testing.assert_array_equal(result.valid_ids, np.concatenate(vocab.encode(valid_docs, tokenizer)))
    assert result.train_ids.dtype == result.valid_ids.dtype == np.int32
    assert result.n_documents == len(documents)


def test_second_call_comes_from_the_cache(corpus, cache):
    first, first_lines = encode(corpus)
    second, second_lines = encode(corpus)
    assert not first.from_cache and second.from_cache
    assert_same(first, second)
    assert len(first_lines) == 1 and "tokenized" in first_lines[0] and "cached in" in first_lines[0]
    assert len(second_lines) == 1 and "from the cache" in second_lines[0]
    assert len(list(cache.glob("corpus-*.npz"))) == 1
    assert not list(cache.glob(".corpus-*")), "temporary file left behind"


def test_key_is_the_content_not_the_name_or_modification_time(corpus, cache, tmp_path):
    encode(corpus)
    copy = tmp_path / "elsewhere" / "renamed.txt"
    copy.parent.mkdir()
    shutil.copy(corpus[0], copy)
    result, _ = encode([copy, corpus[1]])
    assert result.from_cache


def change_a_byte(path):
    text = path.read_bytes()
    position = text.index(b"e")
    path.write_bytes(text[:position] + b"a" + text[position + 1 :])


@pytest.mark.parametrize("change", ["corpus byte", "min_freq", "lowercase", "file order", "text column", "valid_fraction"])
def test_a_change_misses_the_cache(change, corpus, cache):
    encode(corpus)
    if change == "corpus byte":
        change_a_byte(corpus[0])
        result, _ = encode(corpus)
    elif change == "min_freq":
        result, _ = encode(corpus, min_freq=3)
    elif change == "lowercase":
        result, _ = encode(corpus, lowercase=False)
    elif change == "file order":
        result, _ = encode(corpus[::-1])
    elif change == "text column":
        # The same file bytes, read differently.
        result, _ = encode(corpus, text_column="label")
    else:
        result = encode_corpus(corpus, Tokenizer(), 0.2, max_size=3000, min_freq=2)
    assert not result.from_cache
    assert len(list(cache.glob("corpus-*.npz"))) == 2


def test_a_given_vocabulary_encodes_and_is_part_of_the_key(corpus, cache):
    built, _ = encode(corpus)
    tokenizer = Tokenizer()
    small = Vocabulary(built.vocab.tokens[:50])
    first = encode_corpus(corpus, tokenizer, 0.1, vocab=small)
    second = encode_corpus(corpus, tokenizer, 0.1, vocab=small)
    other = encode_corpus(corpus, tokenizer, 0.1, vocab=Vocabulary(built.vocab.tokens[:60]))
    assert not first.from_cache and second.from_cache and not other.from_cache
    assert second.vocab is small
    assert_same(first, second)
    assert first.train_ids.max() < 50 and first.counts == built.counts
    with pytest.raises(ValueError, match="either max_size"):
        encode_corpus(corpus, tokenizer, 0.1, max_size=3000, vocab=small)


def test_held_out_files_validate_and_every_corpus_document_trains(corpus, cache, tmp_path):
    held_out = head_lines(CORPUS, tmp_path / "held-out.txt", 20)
    result, _ = encode(corpus, valid_paths=[held_out])
    tokenizer = Tokenizer()
    documents = read_corpus(corpus)
    np.testing.assert_array_equal(result.train_ids, np.concatenate(result.vocab.encode(documents, tokenizer)))
    np.testing.assert_array_equal(
        result.valid_ids, np.concatenate(result.vocab.encode(read_corpus([held_out]), tokenizer))
    )
    assert result.n_documents == len(documents) + 20
    assert encode(corpus, valid_paths=[held_out])[0].from_cache and not encode(corpus)[0].from_cache


def test_open_words_grow_a_given_vocabulary_and_are_part_of_the_key(corpus, cache, tmp_path):
    from gensim.models import KeyedVectors

    from tftune.open_vocab import OpenWords

    built, _ = encode(corpus)
    small = Vocabulary(built.vocab.tokens[:50])
    kv = KeyedVectors(2, count=0)
    kv.add_vectors(["river", "king", "zzyzx"], np.ones((3, 2), "float32"))
    grown = encode_corpus(corpus, Tokenizer(), 0.1, vocab=small, open_words=OpenWords(kv))
    again = encode_corpus(corpus, Tokenizer(), 0.1, vocab=small, open_words=OpenWords(kv))
    assert not grown.from_cache and again.from_cache
    assert_same(grown, again)
    added = [w for w in ("king", "river") if built.counts[w]]
    assert added and sorted(grown.vocab.tokens[50:]) == added
    assert grown.train_ids.max() == len(grown.vocab) - 1
    assert not encode_corpus(corpus, Tokenizer(), 0.1, vocab=small).from_cache  # closed: another key


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_cache_file_is_rebuilt(damage, corpus, cache):
    first, _ = encode(corpus)
    [file] = cache.glob("corpus-*.npz")
    content = file.read_bytes()
    file.write_bytes({"garbage": b"not a zip file", "truncated": content[: len(content) // 2], "empty": b""}[damage])
    rebuilt, lines = encode(corpus)
    assert not rebuilt.from_cache
    assert_same(first, rebuilt)
    assert len(lines) == 2 and "ignoring unreadable cache file" in lines[0] and "cached in" in lines[1]
    assert file.read_bytes() == content
    assert encode(corpus)[0].from_cache


def test_a_cache_file_of_another_key_is_rebuilt(corpus, cache):
    encode(corpus)
    [first] = cache.glob("corpus-*.npz")
    encode(corpus, min_freq=3)
    [second] = set(cache.glob("corpus-*.npz")) - {first}
    shutil.copy(first, second)
    result, lines = encode(corpus, min_freq=3)
    assert not result.from_cache and "another key" in lines[0]


def test_an_unwritable_cache_directory_only_means_no_caching(corpus, tmp_path, monkeypatch):
    # Below a regular file, so that it cannot be created even by root.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TFTUNE_CACHE_DIR", str(blocker / "cache"))
    first, lines = encode(corpus)
    second, _ = encode(corpus)
    assert not first.from_cache and not second.from_cache
    assert_same(first, second)
    assert len(lines) == 1 and "not cached: cannot write" in lines[0]


@pytest.mark.parametrize("value", ["", "off", "OFF"])
def test_the_cache_can_be_turned_off(value, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TFTUNE_CACHE_DIR", value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() is None
    first, lines = encode(corpus)
    second, _ = encode(corpus)
    assert not first.from_cache and not second.from_cache
    assert lines == [lines[0]] and "cache off" in lines[0]
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TFTUNE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("TFTUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tftune"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert cache_dir() == tmp_path / "home" / ".cache" / "tftune"


@pytest.mark.parametrize("cached", [False, True], ids=["cold", "cache holds the good file"])
def test_bad_corpus_files_fail_as_before_and_write_nothing(cached, corpus, cache, tmp_path):
    if cached:
        encode(corpus)
    written = sorted(cache.glob("*")) if cache.exists() else []
    (tmp_path / "binary.txt").write_bytes(b"text\x00\x01\x02")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text("a single document\n")
    for bad in (tmp_path / "missing.txt", tmp_path / "binary.txt", tmp_path / "empty.txt", tmp_path, tmp_path / "x.pdf"):
        with pytest.raises(DataError) as expected:
            read_corpus([corpus[0], bad])
        with pytest.raises(DataError) as raised:
            encode([corpus[0], bad])
        assert str(raised.value) == str(expected.value)
    with pytest.raises(DataError, match="at least 2 documents"):
        encode([tmp_path / "one.txt"])
    assert (sorted(cache.glob("*")) if cache.exists() else []) == written
