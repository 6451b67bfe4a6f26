"""Tokenization and vocabularies, identical in Python (training) and in TensorFlow graphs (serving).

`Tokenizer.tokenize` (Python, the third-party `regex` module) and `Tokenizer.tf_tokenize` (core TensorFlow
string ops only, so it can live in an exported SavedModel) produce the same tokens for every input.
Both run the same steps, with regular expressions built from shared parts:

1. Character normalisation: NUL counts as whitespace (TensorFlow's UTF-8 lowercasing stops at NUL)
   and the curly apostrophes ’ ‘ become '.
2. Optional lowercasing with `str.lower()` / `tf.strings.lower(encoding="utf-8")`, after two
   pre-normalisations: İ (U+0130) becomes i, so that "İstanbul" gives the vectors' "istanbul"
   rather than its full lowercase with a combining dot; Σ and ς become σ (sigma folding, as
   `str.casefold()` does), because the final-sigma rule depends on context properties that differ
   between the Unicode versions of Python and of TensorFlow's ICU. Capital letters that Python
   lowercases but TensorFlow's ICU does not know yet (`_ICU_LOWERCASE_GAPS`) are lowercased with
   explicit replacements on the TensorFlow side.
3. "n't" is split off a preceding word character (don't -> do n't, can't -> ca n't), and a quote
   that only looks like a clitic because a word follows it is split off ('sometimes -> ' sometimes).
4. Tokens, by the first alternative that matches: a special token (<unk>, <eos>, <pad>) | n't |
   a clitic 's 're 've 'll 'd 'm | a run of word characters | any other single non-space character.

Word characters are those of `\\w` in the third-party `regex` module (letters, combining marks,
decimal digits, connector punctuation, joiners; not ² or ½), which splits the tokens, compiled as
NLTK's `RegexpTokenizer` compiles (NLTK 3.10), so tokens equal NLTK's without importing it (NLTK
imports scipy, a second of start-up). The rest of the Python side (`re`) and TensorFlow's RE2 (whose
`\\w` is ASCII only) get them as an explicit class of code point ranges computed from `regex`, so
the three regex engines agree by construction. Whitespace is the explicit set of characters for
which `str.isspace()` is true, on both sides. Python's substitutions and RE2's global replace are
both leftmost-first and non-overlapping, so equal classes give equal tokens.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import regex

from tftune.errors import DataError

if TYPE_CHECKING:  # NumPy and TensorFlow are imported where they are used, so the command line starts fast
    import numpy as np
    import tensorflow as tf

PAD = "<pad>"
UNK = "<unk>"
EOS = "<eos>"
SPECIAL_TOKENS = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2

# Every character for which str.isspace() is true (the test suite checks this).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)

_CHARACTER_MAP = {"\x00": " ", "\u2019": "'", "\u2018": "'"}
_LOWERCASE_PRE_MAP = {"\u0130": "i", "\u03a3": "\u03c3", "\u03c2": "\u03c3"}

# Capitals that Python 3.11 (Unicode 14) lowercases and TensorFlow's ICU leaves alone. Should ICU
# catch up, the explicit replacements find nothing left to replace.
_ICU_LOWERCASE_GAPS = "\u2c2f\ua7c0\ua7d0\ua7d6\ua7d8" + "".join(
    char for char in map(chr, range(0x10570, 0x10596)) if char.lower() != char
)


def _either_case(letters: str) -> str:
    # Explicit ASCII classes instead of (?i): case-insensitive matching folds differently in
    # Python and RE2 (e.g. the long s "ſ" and the Kelvin sign).
    return "".join(f"[{letter}{letter.upper()}]" for letter in letters)


_SPECIALS = "|".join(SPECIAL_TOKENS)
_NEGATION = _either_case("n") + "'" + _either_case("t")
_CLITIC = "|".join(_either_case(ending) for ending in ("s", "re", "ve", "ll", "d", "m"))


def _negation_pattern(word: str) -> str:
    return f"({word})({_NEGATION})"  # rewrite: r"\1 \2"


def _quote_pattern(word: str) -> str:
    return f"'((?:{_CLITIC}){word})"  # rewrite: r"' \1"


def _token_pattern(word: str, non_whitespace: str) -> str:
    return f"{_SPECIALS}|{_NEGATION}|'(?:{_CLITIC})|{word}+|{non_whitespace}"


def _code_point_ranges(chars: Iterable[str]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for code_point in sorted(map(ord, chars)):
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1] = (ranges[-1][0], code_point)
        else:
            ranges.append((code_point, code_point))
    return ranges


def _char_class(ranges: Iterable[tuple[int, int]], escape, negate: bool = False) -> str:
    body = "".join(escape(low) if low == high else f"{escape(low)}-{escape(high)}" for low, high in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _python_escape(code_point: int) -> str:
    return f"\\U{code_point:08x}"


def _re2_escape(code_point: int) -> str:
    return f"\\x{{{code_point:x}}}"


_WHITESPACE_RANGES = _code_point_ranges(WHITESPACE)

# The flags NLTK's RegexpTokenizer compiles its pattern with.
_REGEX_FLAGS = regex.UNICODE | regex.MULTILINE | regex.DOTALL


@functools.cache
def _word_ranges() -> tuple[tuple[int, int], ...]:
    """Code point ranges of `\\w` in the `regex` module, which splits the tokens."""
    all_chars = "".join(map(chr, range(0x110000)))
    matches = regex.compile(r"\w+", _REGEX_FLAGS).finditer(all_chars)
    return tuple((match.start(), match.end() - 1) for match in matches)


class _Re2Patterns(NamedTuple):
    negation: str
    quote: str
    token: str
    whitespace_run: str


@functools.cache
def _re2_patterns() -> _Re2Patterns:
    word = _char_class(_word_ranges(), _re2_escape)
    return _Re2Patterns(
        negation=_negation_pattern(word),
        quote=_quote_pattern(word),
        token=_token_pattern(word, _char_class(_WHITESPACE_RANGES, _re2_escape, negate=True)),
        whitespace_run=_char_class(_WHITESPACE_RANGES, _re2_escape) + "+",
    )


def _tf_map_characters(texts: tf.Tensor, mapping: dict[str, str]) -> tf.Tensor:
    import tensorflow as tf

    by_replacement = collections.defaultdict(list)
    for source, replacement in mapping.items():
        by_replacement[replacement].append(source)
    for replacement, sources in by_replacement.items():
        pattern = _char_class(_code_point_ranges(sources), _re2_escape)
        texts = tf.strings.regex_replace(texts, pattern, replacement)
    return texts


class Tokenizer:
    """PTB-like word tokenizer with identical Python and TensorFlow implementations.

    Args:
        lowercase: Whether to lowercase the text before splitting it (GloVe's vocabulary is
            lowercase).

    Example:

    >>> tokenizer = Tokenizer()
    >>> tokenizer.tokenize("Don’t panic: it's 3.14 <unk>!")
    ['do', "n't", 'panic', ':', 'it', "'s", '3', '.', '14', '<unk>', '!']
    >>> tokenizer.tf_tokenize(tf.constant(["Don’t panic"])).to_list()
    [[b'do', b"n't", b'panic']]
    """

    def __init__(self, lowercase: bool = True):
        self.lowercase = bool(lowercase)
        python_map = dict(_CHARACTER_MAP, **(_LOWERCASE_PRE_MAP if self.lowercase else {}))
        self._translation = str.maketrans(python_map)
        word = _char_class(_word_ranges(), _python_escape)
        # The lookahead (which RE2 lacks) only skips positions where no match can start; it spares
        # testing the large word class at every character.
        self._negation = re.compile(f"(?=[\\s\\S]{_NEGATION})" + _negation_pattern(word))
        self._quote = re.compile(_quote_pattern(word))
        non_whitespace = _char_class(_WHITESPACE_RANGES, _python_escape, negate=True)
        self._token = regex.compile(_token_pattern(r"\w", non_whitespace), _REGEX_FLAGS)

    def tokenize(self, text: str) -> list[str]:
        """Splits one text into tokens.

        Args:
            text: The text, any Unicode string.

        Returns:
            The tokens, none of them empty or containing whitespace.
        """
        text = text.translate(self._translation)
        if self.lowercase:
            text = text.lower()
        text = self._negation.sub(r"\1 \2", text)
        text = self._quote.sub(r"' \1", text)
        return self._token.findall(text)

    def tf_tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """Splits a batch of texts into tokens with core TensorFlow ops only.

        Works eagerly and inside a `tf.function` with input signature
        `[tf.TensorSpec([None], tf.string)]`; gives the same tokens as `tokenize`. Invalid UTF-8
        is replaced by U+FFFD instead of failing.

        Args:
            texts: String tensor of shape `[batch]`, UTF-8.

        Returns:
            String `tf.RaggedTensor` of shape `[batch, None]`.
        """
        import tensorflow as tf

        patterns = _re2_patterns()
        texts = tf.strings.unicode_transcode(
            tf.convert_to_tensor(texts, tf.string), "UTF-8", "UTF-8", errors="replace"
        )
        texts = _tf_map_characters(texts, _CHARACTER_MAP)
        if self.lowercase:
            texts = _tf_map_characters(texts, _LOWERCASE_PRE_MAP)
            texts = tf.strings.lower(texts, encoding="utf-8")
            for capital in _ICU_LOWERCASE_GAPS:
                texts = tf.strings.regex_replace(texts, _re2_escape(ord(capital)), capital.lower())
        texts = tf.strings.regex_replace(texts, patterns.negation, r"\1 \2")
        texts = tf.strings.regex_replace(texts, patterns.quote, r"' \1")
        # Every non-space character belongs to some token, so isolating the matches and
        # splitting on whitespace is findall().
        texts = tf.strings.regex_replace(texts, patterns.token, r" \0 ")
        texts = tf.strings.regex_replace(texts, patterns.whitespace_run, " ")
        return tf.strings.split(texts)

    def get_config(self) -> dict:
        """Returns the constructor arguments as a JSON-serialisable dict."""
        return {"lowercase": self.lowercase}

    @classmethod
    def from_config(cls, config: dict) -> Tokenizer:
        """Creates a tokenizer from the output of `get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        return f"Tokenizer(lowercase={self.lowercase})"


class Vocabulary:
    """Token <-> id mapping with the special tokens at ids 0 (`<pad>`), 1 (`<unk>`), 2 (`<eos>`).

    Args:
        tokens: The tokens in id order. The special tokens are put first; where they appear
            elsewhere in `tokens` they are left out there.

    Example:

    >>> vocab = Vocabulary.build([["a", "b", "a"], ["c", "a"]], max_size=5)
    >>> vocab.tokens
    ['<pad>', '<unk>', '<eos>', 'a', 'b']
    >>> vocab.ids(["a", "zzz"])
    [3, 1]
    """

    def __init__(self, tokens: Iterable[str]):
        tokens = list(SPECIAL_TOKENS) + [token for token in tokens if token not in SPECIAL_TOKENS]
        self._token_to_id: dict[str, int] = {}
        for token in tokens:
            if not token or any(char in token for char in "\r\n"):
                raise ValueError(f"vocabulary token {token!r} is empty or contains a line break")
            if token in self._token_to_id:
                raise ValueError(f"vocabulary token {token!r} appears twice")
            self._token_to_id[token] = len(self._token_to_id)
        self._tokens = tokens

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], max_size: int, min_freq: int = 1) -> Vocabulary:
        """Builds a vocabulary from tokenized texts, most frequent tokens first.

        Tokens with equal counts are ordered by code point, so the result does not depend on the
        order of the texts.

        Args:
            token_lists: Tokenized texts. Special tokens in them are not counted.
            max_size: Largest vocabulary size, the three special tokens included.
            min_freq: Smallest count a token needs to be included.

        Returns:
            The vocabulary.
        """
        if max_size < len(SPECIAL_TOKENS):
            raise ValueError(f"max_size must be at least {len(SPECIAL_TOKENS)}, got {max_size}")
        counts = collections.Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        kept = [token for token, count in ranked if count >= min_freq]
        return cls(kept[: max_size - len(SPECIAL_TOKENS)])

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"Vocabulary(<{len(self)} tokens>)"

    @property
    def tokens(self) -> list[str]:
        """The tokens in id order (a copy)."""
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        """Returns the id of `token`, or the `<unk>` id for unknown tokens."""
        return self._token_to_id.get(token, UNK_ID)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """Returns the ids of `tokens`, with the `<unk>` id for unknown tokens."""
        return [self._token_to_id.get(token, UNK_ID) for token in tokens]

    def encode(self, texts: Iterable[str], tokenizer: Tokenizer, append_eos: bool = True) -> list[np.ndarray]:
        """Tokenizes texts and maps them to ids.

        Args:
            texts: The texts.
            tokenizer: The tokenizer that splits them.
            append_eos: Whether to end every text with `<eos>`.

        Returns:
            One int32 array of ids per text.
        """
        import numpy as np

        suffix = [EOS_ID] if append_eos else []
        return [np.array(self.ids(tokenizer.tokenize(text)) + suffix, dtype=np.int32) for text in texts]

    def _file_bytes(self) -> bytes:
        return "".join(token + "\n" for token in self._tokens).encode("utf-8")

    def fingerprint(self) -> str:
        """Returns the sha256 hex digest of the tokens, equal to the sha256 of the saved file."""
        return hashlib.sha256(self._file_bytes()).hexdigest()

    def save(self, path: str | Path) -> None:
        """Writes the tokens to `path`, UTF-8, one token per line in id order."""
        Path(path).write_bytes(self._file_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Reads a vocabulary written by `save`.

        Args:
            path: The vocabulary file.

        Returns:
            The vocabulary.

        Raises:
            DataError: If the file is missing, empty, not UTF-8 or not a saved vocabulary.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: vocabulary file is not UTF-8 (byte {error.start})") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read vocabulary file ({error.strerror})") from None
        if not text:
            raise DataError(f"{path}: vocabulary file is empty")
        tokens = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
        for line_number, (token, special) in enumerate(zip(tokens, SPECIAL_TOKENS), start=1):
            if token != special:
                raise DataError(f"{path}: line {line_number} must be {special!r}, found {token!r}")
        seen: set[str] = set()
        for line_number, token in enumerate(tokens, start=1):
            if not token or token in seen:
                problem = "is empty" if not token else f"repeats token {token!r}"
                raise DataError(f"{path}: line {line_number} {problem}")
            seen.add(token)
        return cls(tokens)

    def tf_lookup_table(self) -> tf.lookup.StaticHashTable:
        """Returns a TensorFlow table mapping token strings to int64 ids, `<unk>` id by default."""
        import tensorflow as tf

        initializer = tf.lookup.KeyValueTensorInitializer(
            keys=tf.constant(self._tokens, dtype=tf.string),
            values=tf.range(len(self._tokens), dtype=tf.int64),
        )
        return tf.lookup.StaticHashTable(initializer, default_value=UNK_ID)
