"""Tests of tftune.text: Python and TensorFlow tokenization agree; vocabularies behave."""

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tftune import text as text_module
from tftune.errors import DataError
from tftune.text import EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, WHITESPACE, Tokenizer, Vocabulary

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

HARD_STRINGS = [
    "",
    "   ",
    "\t\n\r\x0b\x0c \xa0\u3000\u2028\u200a\x1c\x85",
    "Don't, can't, won't, isn't, DON'T, shouldn't've, y'all'd've",
    "It’s John‘s book ‘quoted’ and 'sometimes' 'rely' 'll 'S 'Re",
    "We're, they've, I'll, he'd, I'm, she's, O'Neil, rock'n'roll, '90s, ''",
    "n't at start, xn'tn't, don'ts, '<unk>n't",
    "<unk> <eos> <pad> <UNK> a<unk>b <unk>s <un k> <<unk>> @-@",
    "pi is 3.14, 1,000 people, 5-6, 10%, $4.50, 2nd, 1/2, ½, ², ٣",
    "https://example.com/a_b?q=1&r=2#frag mail@example.org C++ C# .NET",
    "emoji 😀👍🏽 👨‍👩‍👧 🇩🇪 ❤️ text",
    "中文文本，日本語のテキスト。한국어 텍스트",
    "हिन्दी में पाठ, क्षत्रिय",
    "النص العربي مع التشكيل: مَرْحَبًا ١٢٣",
    "Straße STRASSE ẞ groß GROẞ",
    "İstanbul DİYARBAKIR ıi Iı",
    "ΟΔΟΣ ΟΔΟΣ. ΣΑ Σ ὈΔΥΣΣΕΎΣ ς σ",
    "final sigma contexts from newer Unicode: ΑΣ\u1ac1 Α\u1734Σ ΑΣ\u0888Α",
    "ǅ ǈ ǋ ǲ ﬁ ﬀ ŉ ǰ ΐ ᾈ ᾼ K Å Ω",
    "Vithkuqi 𐕰𐕱 and Ⱟ Ꟁ Ꟑ",
    "\ufeffBOM start and zero\u200bwidth\u200cjoiners\u200d and soft\xadhyphen",
    "tab\tseparated\tvalues\nnew line\r\nwindows\x1fcontrol\x00nul\x7fdel",
    "naïve café résumé (NFC) vs nai\u0308ve cafe\u0301 (NFD)",
    "under_score __init__ snake_case_name ＡＢＣ全角 ｶﾀｶﾅ",
    "'s 's' ' s' n't' \"quoted\" «guillemets» „Anführung“ — – … ·",
]

SPECIAL_CASES = [
    ("Don’t panic: it's 3.14 <unk>!", ["do", "n't", "panic", ":", "it", "'s", "3", ".", "14", "<unk>", "!"]),
    ("I can't and WON'T", ["i", "ca", "n't", "and", "wo", "n't"]),
    ("'sometimes' he'll", ["'", "sometimes", "'", "he", "'ll"]),
    ("1,000 at https://x.org", ["1", ",", "000", "at", "https", ":", "/", "/", "x", ".", "org"]),
    ("ΟΔΟΣ οδος İstanbul Straße", ["οδοσ", "οδοσ", "istanbul", "straße"]),
    ("a\u3000b\xa0c\x00d", ["a", "b", "c", "d"]),
    ("", []),
]


def _string_tensor(texts):
    return tf.constant([text.encode("utf-8") for text in texts], tf.string, [len(texts)])


def _tf_tokens(tokenizer, texts):
    ragged = tokenizer.tf_tokenize(_string_tensor(texts))
    return [[token.decode("utf-8") for token in row] for row in ragged.to_list()]


def _assert_same_tokens(tokenizer, texts, batch_size=2000):
    # Tokens never contain spaces, so comparing space-joined token strings compares token lists.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def joined_tf_tokens(batch):
        return tf.strings.reduce_join(tokenizer.tf_tokenize(batch), axis=-1, separator=" ")

    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        for text, tf_tokens in zip(batch, joined_tf_tokens(_string_tensor(batch)).numpy()):
            python_tokens = tokenizer.tokenize(text)
            assert " ".join(python_tokens) == tf_tokens.decode("utf-8"), (text, python_tokens, tf_tokens.split())


def _lines(path):
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


@pytest.fixture(params=[True, False], ids=["lowercase", "cased"])
def tokenizer(request):
    return Tokenizer(lowercase=request.param)


@pytest.mark.parametrize(("text", "expected"), SPECIAL_CASES)
def test_tokens_follow_ptb_rules(text, expected):
    tokenizer = Tokenizer()
    assert tokenizer.tokenize(text) == expected
    assert _tf_tokens(tokenizer, [text]) == [expected]


def test_cased_tokenizer_keeps_case_and_splits_upper_case_contractions():
    assert Tokenizer(lowercase=False).tokenize("DON'T Stop HE'S <UNK>") == [
        "DO", "N'T", "Stop", "HE", "'S", "<", "UNK", ">"
    ]


def test_combining_marks_stay_inside_words():
    assert Tokenizer().tokenize("हिन्दी nai\u0308ve ½²") == ["हिन्दी", "nai\u0308ve", "½", "²"]


def test_python_and_tf_agree_on_hand_picked_strings(tokenizer):
    _assert_same_tokens(tokenizer, HARD_STRINGS)


def test_python_and_tf_agree_on_hand_picked_and_shipped_text():
    shipped = sorted(path for path in (REPO / "pretrained").rglob("*") if path.suffix in (".txt", ".csv"))
    texts = HARD_STRINGS + [line for path in shipped for line in _lines(path)]
    _assert_same_tokens(Tokenizer(), texts)


def test_python_and_tf_agree_on_shared_data_sample(tokenizer):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data at {SHARED_DATA}")
    rng = random.Random(0)
    texts = []
    for path in sorted(SHARED_DATA.rglob("*")):
        if path.is_file() and path.suffix != ".bin":
            lines = _lines(path)
            texts.extend(rng.sample(lines, min(len(lines), 150)))
    assert len(texts) > 1000
    _assert_same_tokens(tokenizer, texts)


def test_python_and_tf_agree_on_every_code_point(tokenizer):
    # Each character sits between two word characters, so any difference in the word or
    # whitespace classes, or in lowercasing, changes the tokens.
    chars = [chr(code_point) for code_point in range(0x110000) if not 0xD800 <= code_point <= 0xDFFF]
    texts = ["a".join(chars[start : start + 400]).join("aa") for start in range(0, len(chars), 400)]
    _assert_same_tokens(tokenizer, texts)


def test_tokens_are_split_as_nltk_regexp_tokenizer_splits_them(tokenizer):
    # The tokenizer calls the `regex` module directly, as NLTK's RegexpTokenizer does, to keep
    # NLTK's scipy import out of start-up: its word class and its final split must stay NLTK's.
    from nltk.tokenize import RegexpTokenizer

    all_chars = "".join(map(chr, range(0x110000)))
    nltk_word_spans = RegexpTokenizer(r"\w+").span_tokenize(all_chars)
    assert text_module._word_ranges() == tuple((start, end - 1) for start, end in nltk_word_spans)
    chars = [chr(code_point) for code_point in range(0x110000) if not 0xD800 <= code_point <= 0xDFFF]
    texts = HARD_STRINGS + ["a".join(chars[start : start + 400]) for start in range(0, len(chars), 400)]
    nltk_tokenizer = RegexpTokenizer(tokenizer._token.pattern)
    for text in texts:
        assert tokenizer._token.findall(text) == nltk_tokenizer.tokenize(text), text


def test_whitespace_is_exactly_python_isspace():
    assert set(WHITESPACE) == {char for char in map(chr, range(0x110000)) if char.isspace()}


def test_invalid_utf8_is_replaced_not_fatal():
    tokens = Tokenizer().tf_tokenize(tf.constant([b"abc \xff\xfe def", b"\xc3", b"ok"])).to_list()
    assert tokens[0][0] == b"abc" and tokens[0][-1] == b"def"
    assert "\ufffd".encode() in tokens[0]
    assert tokens[1] == ["\ufffd".encode()]
    assert tokens[2] == [b"ok"]


def test_tf_tokenize_survives_saved_model_round_trip(tmp_path):
    tokenizer = Tokenizer()
    vocab = Vocabulary(["do", "n't", "panic"])
    module = tf.Module()
    module.table = vocab.tf_lookup_table()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(texts):
        return module.table.lookup(tokenizer.tf_tokenize(texts)).to_tensor()

    module.encode = encode
    tf.saved_model.save(module, str(tmp_path / "model"))
    restored = tf.saved_model.load(str(tmp_path / "model"))
    assert restored.encode(tf.constant(["Don’t PANIC now"])).numpy().tolist() == [[3, 4, 5, UNK_ID]]


def test_tokenizer_config_round_trip():
    tokenizer = Tokenizer(lowercase=False)
    restored = Tokenizer.from_config(tokenizer.get_config())
    assert restored.get_config() == {"lowercase": False}
    assert restored.tokenize("Hello World") == ["Hello", "World"]


def test_build_orders_by_count_then_code_point():
    vocab = Vocabulary.build([["b", "c", "a", "b"], ["c", "d", "<unk>", "<unk>", "<unk>"]], max_size=100)
    assert vocab.tokens == [*SPECIAL_TOKENS, "b", "c", "a", "d"]
    reordered = Vocabulary.build([["<unk>", "d", "<unk>", "c"], ["<unk>", "b", "a", "c", "b"]], max_size=100)
    assert reordered.tokens == vocab.tokens


def test_build_respects_max_size_and_min_freq():
    texts = [["x"] * 5 + ["y"] * 3 + ["z"] * 2 + ["w"]]
    assert Vocabulary.build(texts, max_size=5).tokens == [*SPECIAL_TOKENS, "x", "y"]
    assert Vocabulary.build(texts, max_size=100, min_freq=2).tokens == [*SPECIAL_TOKENS, "x", "y", "z"]
    assert Vocabulary.build([], max_size=10).tokens == list(SPECIAL_TOKENS)
    with pytest.raises(ValueError):
        Vocabulary.build(texts, max_size=2)


def test_specials_come_first_and_unknown_maps_to_unk():
    vocab = Vocabulary(["the", "<eos>", "cat"])
    assert vocab.tokens == ["<pad>", "<unk>", "<eos>", "the", "cat"]
    assert (vocab.token_to_id("<pad>"), vocab.token_to_id("<unk>"), vocab.token_to_id("<eos>")) == (
        PAD_ID, UNK_ID, EOS_ID
    )
    assert vocab.ids(["the", "dog", "cat"]) == [3, UNK_ID, 4]
    assert len(vocab) == 5
    with pytest.raises(ValueError):
        Vocabulary(["a", "a"])


def test_encode_appends_eos():
    vocab = Vocabulary(["hello", "world"])
    encoded = vocab.encode(["Hello, world", ""], Tokenizer())
    assert [array.tolist() for array in encoded] == [[3, UNK_ID, 4, EOS_ID], [EOS_ID]]
    assert all(array.dtype == np.int32 for array in encoded)
    assert vocab.encode(["world"], Tokenizer(), append_eos=False)[0].tolist() == [4]


def test_save_load_round_trip_with_non_ascii_tokens(tmp_path):
    vocab = Vocabulary(["straße", "οδοσ", "中文", "😀", "n't", "e\u0301"])
    path = tmp_path / "vocab.txt"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.tokens == vocab.tokens
    assert loaded.fingerprint() == vocab.fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fingerprint_changes_with_tokens():
    base = Vocabulary(["a", "b"])
    assert base.fingerprint() == Vocabulary(["a", "b"]).fingerprint()
    assert base.fingerprint() != Vocabulary(["b", "a"]).fingerprint()
    assert base.fingerprint() != Vocabulary(["a", "b", "c"]).fingerprint()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        (b"", "empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"a\nb\n", "line 1 must be '<pad>'"),
        (b"<pad>\n<unk>\n<eos>\nx\n\ny\n", "line 5 is empty"),
        (b"<pad>\n<unk>\n<eos>\nx\nx\n", "line 5 repeats token 'x'"),
    ],
)
def test_load_rejects_bad_files_with_one_line(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        Vocabulary.load(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_tf_lookup_table_agrees_with_ids():
    vocab = Vocabulary.build([Tokenizer().tokenize("the cat sat on the mat, naïve café 中文 😀")], max_size=100)
    queries = [*vocab.tokens, "unknown", "", "CAT"]
    table = vocab.tf_lookup_table()
    assert table.lookup(tf.constant(queries)).numpy().tolist() == vocab.ids(queries)
    assert table.lookup(tf.constant(queries)).dtype == tf.int64
