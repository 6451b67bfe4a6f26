"""An open vocabulary over frozen word vectors: words that have a vector join a pretrained model.

A pretrained encoder reads words through a frozen embedding, so nothing ties it to the words of
its pretraining corpus: any word with a pretrained vector can be read as it is. When new text
comes (the task's training data for `finetune`, the target-domain corpus for `pretrain --from`),
its words that have a vector but no row are appended to the vocabulary, each with its frozen
vector; the recurrent weights are copied unchanged. Words without a vector stay `<unk>`.

A language model also needs output rows for the new words. Each new word starts as a share of
`<unk>`: the `<unk>` row's weights, and its bias plus the log of the word's share of the new
words' tokens. Before growing, all those tokens were predicted as `<unk>`; after it, the model
spreads `<unk>`'s probability over them by frequency, so the loss does not jump.

Example:

>>> from tftune.text import Vocabulary
>>> vocab = Vocabulary(["the", "cat"])
>>> vectors = {"the": 0, "cat": 1, "dog": 2, "sat": 3}
>>> added = new_words({"the": 5, "dog": 2, "sat": 3, "zzyzx": 9}, vocab, vectors)
>>> added
['sat', 'dog']
>>> grow_vocabulary(vocab, added).tokens[-2:]
['sat', 'dog']
"""

import dataclasses
import functools
import hashlib
from collections.abc import Container, Mapping, Sequence

import keras
import numpy as np

from tftune.text import SPECIAL_TOKENS, UNK_ID, Vocabulary

def _has_vector(word: str, vectors: Container[str], lowercase_fallback: bool) -> bool:
    return word in vectors or (lowercase_fallback and word.lower() in vectors)


def new_words(
    counts: Mapping[str, int], vocab: Vocabulary, vectors: Container[str], lowercase_fallback: bool = True
) -> list[str]:
    """The words of a text that have a vector but no vocabulary row, most frequent first.

    Args:
        counts: Token counts of the new text.
        vocab: The model's vocabulary.
        vectors: The words that have a vector (e.g. a gensim `KeyedVectors`' `key_to_index`).
        lowercase_fallback: Count `word` as having a vector when `word.lower()` has one, as
            `tftune.embeddings.align` does.

    Returns:
        The words to add; ties in count are ordered by code point, so the result does not depend
        on the order of the text.
    """
    known = set(vocab.tokens)
    candidates = [
        (word, count)
        for word, count in counts.items()
        if word not in known and word not in SPECIAL_TOKENS and _has_vector(word, vectors, lowercase_fallback)
    ]
    return [word for word, _ in sorted(candidates, key=lambda item: (-item[1], item[0]))]


class OpenWords:
    """The words that may join a vocabulary: those that have a vector.

    Args:
        kv: gensim `KeyedVectors`, the frozen vectors of the model.
        lowercase_fallback: Count `word` as having a vector when `word.lower()` has one.

    Example:

    ```python
    open_words = OpenWords(load_vectors("pretrained/glove.6B.50d.toml", "npy"))
    grown = grow_vocabulary(vocab, open_words.new_words(counts, vocab))
    ```
    """

    def __init__(self, kv, lowercase_fallback: bool = True):
        self.kv = kv
        self.lowercase_fallback = lowercase_fallback

    def new_words(self, counts: Mapping[str, int], vocab: Vocabulary) -> list[str]:
        """See `new_words`."""
        return new_words(counts, vocab, self.kv.key_to_index, self.lowercase_fallback)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A sha256 of the words (and the fallback), for caches of results that depend on them."""
        digest = hashlib.sha256(f"lowercase_fallback={self.lowercase_fallback}\n".encode())
        for word in self.kv.index_to_key:
            digest.update(word.encode("utf-8") + b"\n")
        return digest.hexdigest()


def grow_vocabulary(vocab: Vocabulary, words: Sequence[str]) -> Vocabulary:
    """`vocab` with `words` appended: every existing id keeps its token."""
    return Vocabulary(vocab.tokens + list(words))


def grow_embedding(matrix: np.ndarray, kv, words: Sequence[str], lowercase_fallback: bool = True) -> np.ndarray:
    """The embedding matrix with one more row per word: its pretrained vector.

    Args:
        matrix: The model's embedding `[vocabulary_size, dim]` (its special and out-of-vector rows
            stay as they were trained with).
        kv: gensim `KeyedVectors` holding a vector for each of `words`.
        words: The words to add, as given to `grow_vocabulary`.
        lowercase_fallback: Use `word.lower()`'s vector when `word` has none.
    """
    if not words:
        return matrix
    rows = [kv.key_to_index[word] if word in kv.key_to_index else kv.key_to_index[word.lower()] for word in words]
    if kv.vector_size != matrix.shape[1]:
        raise ValueError(f"the vectors have {kv.vector_size} dimensions, the embedding {matrix.shape[1]}")
    return np.concatenate([matrix, np.asarray(kv.vectors[rows], dtype=matrix.dtype)])


def grow_output_weights(weights: Sequence[np.ndarray], unk_share: float, shares: Sequence[float]) -> list[np.ndarray]:
    """A language-model head's weights with one more output per new word, each a share of `<unk>`.

    `<unk>`'s probability is split between `<unk>` (`unk_share`) and the new words (`shares`), so
    every other word's probability, and the loss on its tokens, stays exactly as it was.

    Args:
        weights: The head's weights: `[kernel [d, vocab], bias [vocab]]` for a dense head, or
            `[bias [vocab]]` for a tied one (whose rows are the embedding itself).
        unk_share: The share of the old `<unk>` tokens that stay `<unk>`.
        shares: Each new word's share of the old `<unk>` tokens (together with `unk_share`, 1).

    Returns:
        The grown weights, in the same order.
    """
    grown = []
    for weight in weights:
        if weight.ndim == 1:  # the bias: <unk>'s plus the log share
            offsets = np.log(np.asarray(shares, dtype="float64"))
            extra = (weight[UNK_ID] + offsets).astype(weight.dtype)
            weight = weight.copy()
            weight[UNK_ID] += np.log(unk_share)
        else:  # the kernel: <unk>'s column for every new word
            extra = np.repeat(weight[:, UNK_ID : UNK_ID + 1], len(shares), axis=1)
        grown.append(np.concatenate([weight, extra], axis=-1))
    return grown


def copy_recurrent_weights(source, target) -> None:
    """Copies every weight of the `source` encoder into `target`, except the embedding (by layer name)."""
    for layer in source.layers:
        if layer.weights and layer.name != "embedding":
            target.get_layer(layer.name).set_weights(layer.get_weights())


def grow_encoder(encoder, kv, words: Sequence[str], lowercase_fallback: bool = True):
    """A copy of a (trained) encoder whose frozen embedding has a row more per word.

    Args:
        encoder: The `tftune.models.TextBackbone`, its weights loaded.
        kv: gensim `KeyedVectors` with a vector for each of `words`.
        words: The words to add, as given to `grow_vocabulary`.
        lowercase_fallback: Use `word.lower()`'s vector when `word` has none.

    Returns:
        A new encoder of the same layers and weights; `encoder` itself when `words` is empty.
    """
    if not words:
        return encoder
    old = encoder.get_layer("embedding")
    matrix = grow_embedding(keras.ops.convert_to_numpy(old.embeddings), kv, words, lowercase_fallback)
    grown = type(encoder).from_config({**encoder.get_config(), "vocabulary_size": len(matrix)})
    grown.get_layer("embedding").set_weights([matrix])
    copy_recurrent_weights(encoder, grown)
    return grown


@dataclasses.dataclass(frozen=True)
class Growth:
    """What opening the vocabulary did to one text, for logs and `metrics.json`.

    Attributes:
        added: Words added (with a vector, without a row before).
        token_share_before: Share of the text's tokens that had a row before.
        token_share_after: The same after adding the words.
    """

    added: int
    token_share_before: float
    token_share_after: float

    def summary(self) -> str:
        return (
            f"open vocabulary: {self.added:,} words with a vector joined; tokens with a row "
            f"{self.token_share_before:.1%} -> {self.token_share_after:.1%}"
        )


def measure_growth(counts: Mapping[str, int], vocab: Vocabulary, words: Sequence[str]) -> Growth:
    """Token coverage of a text by `vocab`, before and after adding `words`."""
    counted = {word: count for word, count in counts.items() if word not in SPECIAL_TOKENS}
    total = sum(counted.values()) or 1
    known = set(vocab.tokens)
    before = sum(count for word, count in counted.items() if word in known)
    added = sum(counted.get(word, 0) for word in words)
    return Growth(len(words), before / total, (before + added) / total)


def unk_shares(counts: Mapping[str, int], grown: Vocabulary, words: Sequence[str]) -> tuple[float, list[float]]:
    """How the text's old `<unk>` tokens divide between those that stay `<unk>` and each new word.

    Args:
        counts: Token counts of the text.
        grown: The vocabulary after `grow_vocabulary`.
        words: The words added.

    Returns:
        `(unk_share, shares)`, add-one smoothed so that no share is zero; they sum to 1.
    """
    still_unknown = sum(
        count for word, count in counts.items() if word not in SPECIAL_TOKENS and grown.token_to_id(word) == UNK_ID
    )
    smoothed = np.array([counts.get(word, 0) + 1.0 for word in words] + [still_unknown + 1.0])
    smoothed /= smoothed.sum()
    return float(smoothed[-1]), [float(share) for share in smoothed[:-1]]
