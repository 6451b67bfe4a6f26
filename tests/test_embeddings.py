"""Tests of tftune.embeddings on small files cut from the real GloVe vectors the project ships."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors

from tftune.embeddings import (
    FORMATS,
    Coverage,
    align,
    convert_to_keyedvectors,
    inspect_vectors,
    load_vectors,
    vector_size,
)
from tftune.errors import EmbeddingsError
from tftune.text import EOS, PAD, UNK, Vocabulary

REPO = Path(__file__).resolve().parents[1]
SHARED_GLOVE = REPO.parent / "shared" / "data" / "glove-6b-50d-top20k" / "glove.6B.50d.top20k.txt"
N_ROWS = 50


def _glove_source() -> Path | None:
    shipped = sorted(p for p in (REPO / "pretrained").glob("*glove*.txt*") if p.is_file())
    candidates = shipped + [SHARED_GLOVE]
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="module")
def glove_lines() -> list[str]:
    """The first rows of the real GloVe file, exactly as written there."""
    source = _glove_source()
    if source is None:
        pytest.skip("no GloVe vectors file in pretrained/ or ../shared/data")
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as fin:
        return [next(fin) for _ in range(N_ROWS)]


@pytest.fixture
def files(tmp_path, glove_lines) -> dict[str, Path]:
    """The same vectors in every supported format, written by gensim from the GloVe text."""
    glove = tmp_path / "small.glove.txt"
    glove.write_text("".join(glove_lines), encoding="utf-8")
    kv = KeyedVectors.load_word2vec_format(str(glove), binary=False, no_header=True)
    paths = {
        "glove": glove,
        "glove-gz": tmp_path / "small.glove.txt.gz",
        "word2vec": tmp_path / "small.w2v.txt",
        "word2vec-binary": tmp_path / "small.w2v.bin",
        "keyedvectors": tmp_path / "small.kv",
    }
    with gzip.open(paths["glove-gz"], "wt", encoding="utf-8") as fout:
        fout.write("".join(glove_lines))
    kv.save_word2vec_format(str(paths["word2vec"]), binary=False)
    kv.save_word2vec_format(str(paths["word2vec-binary"]), binary=True)
    kv.save(str(paths["keyedvectors"]), separately=["vectors"])
    return paths


@pytest.fixture
def kv(files) -> KeyedVectors:
    return load_vectors(files["glove"], "glove")


def _assert_error(path: Path, fmt: str, *phrases: str) -> str:
    with pytest.raises(EmbeddingsError) as caught:
        load_vectors(path, fmt)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message
    return message


# Loading


def test_glove_values_match_the_text(kv, glove_lines):
    assert len(kv) == N_ROWS and kv.vector_size == 50
    for line in glove_lines:
        word, *values = line.split(" ")
        np.testing.assert_array_equal(kv[word], np.array(values, dtype=np.float32))


@pytest.mark.parametrize("name", ["glove-gz", "word2vec", "word2vec-binary", "keyedvectors"])
def test_every_format_loads_identical_vectors(files, kv, name):
    fmt = "glove" if name == "glove-gz" else name
    loaded = load_vectors(files[name], fmt)
    assert loaded.index_to_key == kv.index_to_key
    np.testing.assert_array_equal(loaded.vectors, kv.vectors)


def test_keyedvectors_are_memory_mapped(files):
    assert isinstance(load_vectors(files["keyedvectors"], "keyedvectors").vectors, np.memmap)


def test_shipped_word2vec_binary_loads():
    path = REPO / "pretrained" / "word2vec-googlenews-300d-top5k.bin"
    if not path.is_file():
        pytest.skip("pretrained/word2vec-googlenews-300d-top5k.bin is absent")
    loaded = load_vectors(path, "word2vec-binary")
    assert (len(loaded), loaded.vector_size) == (5000, 300)
    np.testing.assert_allclose(np.linalg.norm(loaded.vectors, axis=1), 1.0, atol=1e-4)
    _assert_error(path, "word2vec", "use format 'word2vec-binary'")


def test_convert_to_keyedvectors_keeps_only_wanted_words(files, kv, tmp_path):
    dst = tmp_path / "kept.kv"
    convert_to_keyedvectors(files["word2vec-binary"], "word2vec-binary", dst, keep={"of", "the", "not-a-word"})
    assert Path(f"{dst}.vectors.npy").is_file()
    kept = load_vectors(dst, "keyedvectors")
    assert isinstance(kept.vectors, np.memmap)
    assert kept.index_to_key == ["the", "of"]  # source order
    np.testing.assert_array_equal(kept.vectors, kv[["the", "of"]])


def test_convert_to_keyedvectors_without_keep_saves_everything(files, kv, tmp_path):
    convert_to_keyedvectors(files["glove"], "glove", tmp_path / "all.kv")
    np.testing.assert_array_equal(load_vectors(tmp_path / "all.kv", "keyedvectors").vectors, kv.vectors)


def test_convert_to_keyedvectors_rejects_keep_without_overlap(files, tmp_path):
    with pytest.raises(EmbeddingsError, match="none of the 2 words to keep"):
        convert_to_keyedvectors(files["glove"], "glove", tmp_path / "none.kv", keep={"zzqx", "qwerty"})


# Alignment and coverage

WORDS = ["the", "of", "The", "zzqx", "qwerty"]
COUNTS = {"the": 10, "of": 5, "The": 3, "zzqx": 2, "qwerty": 1, "not-in-vocab": 4, EOS: 7}


def test_align_rows_are_the_source_vectors(kv):
    vocab = Vocabulary(WORDS)
    matrix, _ = align(vocab, kv)
    assert matrix.dtype == np.float32 and matrix.shape == (len(vocab), 50)
    np.testing.assert_array_equal(matrix[vocab.tokens.index("the")], kv["the"])
    np.testing.assert_array_equal(matrix[vocab.tokens.index("of")], kv["of"])
    np.testing.assert_array_equal(matrix[vocab.tokens.index("The")], kv["the"])  # lowercase fallback
    np.testing.assert_array_equal(matrix[vocab.tokens.index(PAD)], np.zeros(50))


def test_align_without_lowercase_fallback_treats_case_variants_as_missing(kv):
    vocab = Vocabulary(WORDS)
    matrix, coverage = align(vocab, kv, lowercase_fallback=False, oov="zeros")
    np.testing.assert_array_equal(matrix[vocab.tokens.index("The")], np.zeros(50))
    assert coverage.types_found == 2


@pytest.mark.parametrize("oov", ["random", "zeros", "mean"])
def test_specials_are_distinct_and_pad_is_zero(kv, oov):
    vocab = Vocabulary(WORDS)
    matrix, _ = align(vocab, kv, oov=oov)
    pad, unk, eos = (matrix[vocab.tokens.index(t)] for t in (PAD, UNK, EOS))
    assert not pad.any()
    assert unk.any() and eos.any() and not np.array_equal(unk, eos)


def test_oov_zeros_and_mean(kv):
    vocab = Vocabulary(WORDS)
    rows = [vocab.tokens.index(w) for w in ("zzqx", "qwerty")]
    zeros, _ = align(vocab, kv, oov="zeros")
    assert not zeros[rows].any()
    mean, _ = align(vocab, kv, oov="mean")
    np.testing.assert_allclose(mean[rows], np.tile(kv.vectors.mean(axis=0), (2, 1)), atol=1e-5)


def test_oov_random_is_seeded_and_has_the_scale_of_the_vectors(kv):
    missing = [f"missing-word-{i}" for i in range(2000)]
    vocab = Vocabulary(["the", *missing])
    first, _ = align(vocab, kv, oov="random", seed=7)
    again, _ = align(vocab, kv, oov="random", seed=7)
    other, _ = align(vocab, kv, oov="random", seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    random_rows = first[[vocab.tokens.index(w) for w in missing]]
    std = kv.vectors.std(axis=0)
    np.testing.assert_allclose(random_rows.std(axis=0), std, rtol=0.1)
    assert np.all(np.abs(random_rows.mean(axis=0)) < 5 * std / np.sqrt(len(missing)))


def test_unknown_oov_treatment(kv):
    with pytest.raises(EmbeddingsError, match="unknown oov treatment 'unk'; expected one of random, zeros, mean"):
        align(Vocabulary(WORDS), kv, oov="unk")


def test_coverage_numbers(kv):
    # Found with fallback: the (10), of (5), The -> the (3); missing: zzqx (2), qwerty (1).
    # Corpus tokens outside the vocabulary (4) count as not found; <eos> is a special, not counted.
    _, coverage = align(Vocabulary(WORDS), kv, counts=COUNTS)
    assert coverage == Coverage(
        vocab_size=8, specials=3, types_found=3, type_share=3 / 5, token_share=18 / 25, missing_top=["zzqx", "qwerty"]
    )
    assert coverage.summary() == "vectors: 3 / 5 vocabulary types (60.0%), 72.0% of corpus tokens; 3 specials"


def test_coverage_without_fallback_or_counts(kv):
    _, coverage = align(Vocabulary(WORDS), kv, lowercase_fallback=False, counts=COUNTS)
    assert (coverage.types_found, coverage.token_share) == (2, 15 / 25)
    assert coverage.missing_top == ["The", "zzqx", "qwerty"]
    _, uncounted = align(Vocabulary(["qwerty", "the", "zzqx"]), kv)
    assert uncounted.token_share is None
    assert uncounted.missing_top == ["qwerty", "zzqx"]  # vocabulary order
    assert uncounted.summary() == "vectors: 1 / 3 vocabulary types (33.3%); 3 specials"


def test_inspect_vectors(files):
    info = inspect_vectors(files["word2vec"], "word2vec", corpus_token_counts=COUNTS)
    assert (info["size"], info["dim"], info["format"]) == (N_ROWS, 50, "word2vec")
    coverage = info["coverage"]
    # Corpus types: the, of, The, zzqx, qwerty, not-in-vocab; found: the, of, The.
    assert (coverage["vocab_size"], coverage["types_found"]) == (6, 3)
    assert coverage["token_share"] == pytest.approx(18 / 25)
    assert coverage["missing_top"] == ["not-in-vocab", "zzqx", "qwerty"]
    assert inspect_vectors(files["glove"], "glove")["coverage"] is None


# Failure modes: one line, naming the file and the cause


def test_unknown_format(files):
    message = _assert_error(files["glove"], "fasttext", "unknown vectors format 'fasttext'")
    assert ", ".join(FORMATS) in message


def test_missing_file(tmp_path):
    _assert_error(tmp_path / "absent.txt", "glove", "does not exist")


def test_directory(tmp_path):
    _assert_error(tmp_path, "glove", "it is a directory, not a regular file")


def test_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "vectors.txt"
    os.mkfifo(fifo)
    _assert_error(fifo, "glove", "it is a named pipe (FIFO), not a regular file")


def test_endless_device_is_refused_without_reading_it():
    _assert_error(Path("/dev/zero"), "glove", "it is a character device, not a regular file")


@pytest.mark.parametrize("name", ["empty.txt", "empty.txt.gz"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    (gzip.open if name.endswith(".gz") else open)(path, "wb").close()
    _assert_error(path, "glove", "file is empty")


@pytest.mark.parametrize("fmt", ["glove", "word2vec"])
def test_binary_file_read_as_text(files, fmt):
    _assert_error(files["word2vec-binary"], fmt, "looks like word2vec binary", "use format 'word2vec-binary'")
    _assert_error(files["keyedvectors"], fmt, "looks like a gensim KeyedVectors file", "use format 'keyedvectors'")


def test_text_file_read_as_binary(files):
    _assert_error(files["word2vec"], "word2vec-binary", "looks like word2vec text", "use format 'word2vec'")
    _assert_error(files["glove"], "word2vec-binary", "looks like GloVe text", "use format 'glove'")


def test_text_file_read_as_keyedvectors(files):
    _assert_error(files["glove"], "keyedvectors", "looks like GloVe text", "use format 'glove'")


def test_glove_read_as_word2vec(files):
    _assert_error(files["glove"], "word2vec", "looks like GloVe text", "use format 'glove'")


def test_word2vec_read_as_glove(files):
    _assert_error(files["word2vec"], "glove", "looks like word2vec text", "use format 'word2vec'")


def test_unreadable_header(tmp_path, glove_lines):
    path = tmp_path / "titled.txt"
    path.write_text("GloVe vectors\n" + "".join(glove_lines), encoding="utf-8")
    _assert_error(path, "word2vec", "line 1 is not a 'count dim' header")


def test_truncated_last_line(tmp_path, glove_lines):
    path = tmp_path / "truncated.txt"
    path.write_text("".join(glove_lines[:-1]) + glove_lines[-1][:100], encoding="utf-8")
    _assert_error(path, "glove", f"line {N_ROWS} has", "expected 50", "truncated")


def test_truncated_word2vec_text(files, tmp_path):
    path = tmp_path / "truncated.w2v.txt"
    path.write_text(files["word2vec"].read_text(encoding="utf-8")[:-200], encoding="utf-8")
    _assert_error(path, "word2vec", f"line {N_ROWS + 1} has", "truncated")


def test_fewer_rows_than_the_header_announces(files, tmp_path):
    text = tmp_path / "short.w2v.txt"
    text.write_text("".join(files["word2vec"].read_text(encoding="utf-8").splitlines(True)[:-5]), encoding="utf-8")
    _assert_error(text, "word2vec", f"ends before the {N_ROWS} vectors its header announces")
    binary = tmp_path / "short.w2v.bin"
    binary.write_bytes(files["word2vec-binary"].read_bytes()[:-300])
    _assert_error(binary, "word2vec-binary", f"ends before the {N_ROWS} vectors its header announces")


def test_ragged_rows(tmp_path, glove_lines):
    lines = list(glove_lines)
    lines[10] = " ".join(lines[10].split(" ")[:31]) + "\n"
    path = tmp_path / "ragged.txt"
    path.write_text("".join(lines), encoding="utf-8")
    _assert_error(path, "glove", "line 11 has 30 values, expected 50")


def test_value_that_is_not_a_number(tmp_path, glove_lines):
    lines = list(glove_lines)
    word, first, rest = lines[3].split(" ", 2)
    lines[3] = f"{word} n/a {rest}"
    path = tmp_path / "nan.txt"
    path.write_text("".join(lines), encoding="utf-8")
    _assert_error(path, "glove", "line 4: 'n/a' is not a number")


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_non_finite_value_in_text_names_line_and_word(tmp_path, glove_lines, bad):
    lines = list(glove_lines)
    word, first, rest = lines[6].split(" ", 2)
    lines[6] = f"{word} {first} {bad} {rest.split(' ', 1)[1]}"
    path = tmp_path / "poisoned.txt"
    path.write_text("".join(lines), encoding="utf-8")
    _assert_error(path, "glove", f"line 7 (word {word!r}) has a non-finite value")


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec-binary", "keyedvectors"])
def test_non_finite_value_in_other_formats_names_the_row_and_word(tmp_path, kv, fmt):
    poisoned = KeyedVectors(kv.vector_size, count=0, dtype=kv.vectors.dtype)
    vectors = kv.vectors.copy()
    vectors[9, 3] = np.nan
    poisoned.add_vectors(kv.index_to_key, vectors)
    path = tmp_path / f"poisoned.{fmt}"
    if fmt == "keyedvectors":
        poisoned.save(str(path), separately=["vectors"])
    else:
        poisoned.save_word2vec_format(str(path), binary=fmt == "word2vec-binary")
    where = "line 11" if fmt == "word2vec" else "record 10"  # word2vec text: line 1 is the header
    _assert_error(path, fmt, f"{where} (word {kv.index_to_key[9]!r}) has a non-finite value (nan)")


def _npy_manifest(tmp_path, kv, words=None, matrix=None, extra=""):
    """An npy manifest of `kv` (or of the given words and matrix) with its two files."""
    words = kv.index_to_key if words is None else words
    np.save(tmp_path / "matrix.npy", kv.vectors if matrix is None else matrix)
    (tmp_path / "words.txt").write_text("".join(f"{word}\n" for word in words), encoding="utf-8")
    path = tmp_path / "vectors.toml"
    path.write_text(f'# vectors\nwords = "words.txt"\nmatrix = "matrix.npy"\n{extra}', encoding="utf-8")
    return path


def test_npy_manifest_loads_the_same_vectors_memory_mapped(tmp_path, kv):
    loaded = load_vectors(_npy_manifest(tmp_path, kv), "npy")
    assert loaded.index_to_key == kv.index_to_key
    assert loaded["the"].tolist() == kv["the"].tolist()
    assert isinstance(loaded.vectors, np.memmap)
    assert vector_size(tmp_path / "vectors.toml", "npy") == kv.vector_size


def test_npy_manifest_read_as_glove_names_the_format(tmp_path, kv):
    _assert_error(_npy_manifest(tmp_path, kv), "glove", "use format 'npy'")


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("fewer words", "has 49 words but the matrix has 50 rows"),
        ("repeated word", "line 5: 'the' repeats line 1"),
        ("missing package", "the Python package 'no_such_vectors_pkg' is not installed (pip install no-such-vectors)"),
        ("not a matrix", "holds a int64 array of shape (50,)"),
    ],
)
def test_npy_manifest_errors(tmp_path, kv, case, phrase):
    words, matrix, extra = list(kv.index_to_key), kv.vectors, ""
    if case == "fewer words":
        words = words[:-1]
    elif case == "repeated word":
        words[4] = "the"
    elif case == "not a matrix":
        matrix = np.arange(50)
    path = _npy_manifest(tmp_path, kv, words, matrix)
    if case == "missing package":
        path.write_text('words = "words.txt"\nmatrix = "no_such_vectors_pkg:m.npy"\nrequires = "no-such-vectors"\n')
    _assert_error(path, "npy", phrase)


def test_non_finite_value_in_npy_matrix(tmp_path, kv):
    matrix = kv.vectors.copy()
    matrix[2, 0] = np.inf
    _assert_error(_npy_manifest(tmp_path, kv, matrix=matrix), "npy", f"record 3 (word {kv.index_to_key[2]!r}) has a non-finite value (inf)")


def test_shipped_default_vectors_are_all_of_glove_6b_50d():
    """The default manifest reads the 400,000 words, the first 20,000 equal to the shipped text file."""
    full = load_vectors(REPO / "pretrained" / "glove.6B.50d.toml", "npy")
    assert (len(full), full.vector_size) == (400_000, 50)
    top = load_vectors(REPO / "pretrained" / "glove.6B.50d.top20k.txt", "glove")
    assert full.index_to_key[:20_000] == top.index_to_key
    np.testing.assert_array_equal(full.vectors[:20_000], top.vectors)


def test_non_utf8_text(tmp_path, glove_lines):
    data = "".join(glove_lines).encode("utf-8").replace(b"\nof ", b"\n\xe9t\xe9 ", 1)
    path = tmp_path / "latin1.txt"
    path.write_bytes(data)
    _assert_error(path, "glove", "line 4 is not UTF-8 (byte 0xe9")


def test_keyedvectors_without_companion_file(files):
    Path(f"{files['keyedvectors']}.vectors.npy").unlink()
    _assert_error(files["keyedvectors"], "keyedvectors", "small.kv.vectors.npy is missing")


def test_truncated_keyedvectors(files, tmp_path):
    path = tmp_path / "truncated.kv"
    kv_bytes = files["keyedvectors"].read_bytes()
    path.write_bytes(kv_bytes[: len(kv_bytes) // 2])
    _assert_error(path, "keyedvectors", "not a gensim KeyedVectors file")


# Downloads


def test_import_and_bad_model_name_stay_offline():
    # gensim.downloader contacts the network whenever it is used, so it must not even be imported.
    script = (
        "import sys\n"
        "import tftune.embeddings as embeddings\n"
        "assert 'gensim.downloader' not in sys.modules\n"
        "try:\n"
        "    embeddings.load_vectors_by_name('pretrained/glove.6B.50d.top20k.txt')\n"
        "except embeddings.EmbeddingsError as error:\n"
        "    print(error)\n"
        "assert 'gensim.downloader' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "'pretrained/glove.6B.50d.top20k.txt' is not a gensim-data model name (e.g. 'glove-wiki-gigaword-100'); "
        "load vectors files with load_vectors(path, fmt)"
    )
