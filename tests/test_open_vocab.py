"""The open vocabulary: words with a vector join a pretrained encoder and its language-model head."""

import json
import math

import numpy as np
import pytest
from gensim.models import KeyedVectors

from conftest import GLOVE
from tftune.embeddings import load_vectors
from tftune.export import Predictor
from tftune.models import build_encoder, build_language_model
from tftune.open_vocab import (
    copy_recurrent_weights,
    grow_embedding,
    grow_encoder,
    grow_output_weights,
    grow_vocabulary,
    measure_growth,
    new_words,
    unk_shares,
)
from tftune.text import UNK_ID, Vocabulary
from tftune.finetuning import finetune
from tftune.inputs import corpus_data
from tftune.pretraining import pretrain


@pytest.fixture(scope="module")
def kv():
    """The first 2,000 rows of the shipped GloVe vectors."""
    full = load_vectors(GLOVE, "glove")
    small = KeyedVectors(full.vector_size, count=0)
    small.add_vectors(full.index_to_key[:2000], full.vectors[:2000])
    return small


COUNTS = {"the": 9, "of": 4, "river": 3, "Market": 2, "qwxzv": 5, "<eos>": 7}


def test_new_words_are_those_with_a_vector_most_frequent_first(kv):
    vocab = Vocabulary(["the", "of"])
    assert "market" in kv.key_to_index and "qwxzv" not in kv.key_to_index
    assert new_words(COUNTS, vocab, kv.key_to_index) == ["river", "Market"]
    assert new_words(COUNTS, vocab, kv.key_to_index, lowercase_fallback=False) == ["river"]


def test_growing_keeps_every_existing_id(kv):
    vocab = Vocabulary(["the", "of"])
    grown = grow_vocabulary(vocab, ["river", "Market"])
    assert grown.tokens[: len(vocab)] == vocab.tokens
    assert grown.ids(["the", "river", "Market", "qwxzv"]) == [3, 5, 6, UNK_ID]


def test_grown_embedding_rows_are_the_frozen_vectors(kv):
    matrix = np.arange(5 * 50, dtype="float32").reshape(5, 50)
    grown = grow_embedding(matrix, kv, ["river", "Market"])
    np.testing.assert_array_equal(grown[:5], matrix)
    np.testing.assert_array_equal(grown[5], kv["river"])
    np.testing.assert_array_equal(grown[6], kv["market"])


def test_coverage_before_and_after():
    growth = measure_growth(COUNTS, Vocabulary(["the", "of"]), ["river", "Market"])
    assert (growth.added, growth.token_share_before, growth.token_share_after) == (2, 13 / 23, 18 / 23)
    assert "13 -> " not in growth.summary() and "56.5% -> 78.3%" in growth.summary()


@pytest.mark.parametrize("output", ["full", "sampled", "tied"])
def test_grown_language_model_keeps_every_old_word_probability(kv, output):
    """Dense heads: the new words split <unk>'s probability, every other word keeps its own."""
    vocab = Vocabulary(kv.index_to_key[:37])
    words = ["river", "market"]
    grown_vocab = grow_vocabulary(vocab, words)
    matrix = np.concatenate([np.zeros((3, 50), "float32"), kv.vectors[:37]])
    encoder = build_encoder(matrix, "gru", 1, 8)
    model = build_language_model(encoder, output, num_sampled=8)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(w.dtype) for w in model.get_weights()])
    model.backbone.get_layer("embedding").set_weights([matrix])

    grown_encoder = build_encoder(grow_embedding(matrix, kv, words), "gru", 1, 8)
    copy_recurrent_weights(encoder, grown_encoder)
    grown_model = build_language_model(grown_encoder, output, num_sampled=8)
    if model.lm_projection is not None:
        grown_model.lm_projection.set_weights(model.lm_projection.get_weights())
    unk_share, shares = unk_shares({"river": 3, "market": 1, "qwxzv": 0}, grown_vocab, words)
    assert unk_share + sum(shares) == pytest.approx(1.0)
    grown_model.lm_head.set_weights(grow_output_weights(model.lm_head.get_weights(), unk_share, shares))

    ids = rng.integers(1, len(vocab), size=(2, 6)).astype("int32")
    before = _softmax(model(ids).numpy())
    after = _softmax(grown_model(ids).numpy())
    assert after.shape[-1] == len(grown_vocab)
    if output == "tied":  # the new rows score against the new words' own vectors: close, not exact
        assert np.isfinite(after).all()
        return
    others = [i for i in range(len(vocab)) if i != UNK_ID]
    np.testing.assert_allclose(after[..., others], before[..., others], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(after[..., UNK_ID] + after[..., len(vocab):].sum(-1), before[..., UNK_ID], rtol=1e-4)
    np.testing.assert_allclose(after[..., len(vocab)] / after[..., len(vocab) + 1], 4 / 2, rtol=1e-4)


def _softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def test_grown_encoder_reads_old_ids_as_before_and_new_words_by_their_vectors(kv):
    matrix = np.concatenate([np.zeros((3, 50), "float32"), kv.vectors[:37]])
    encoder = build_encoder(matrix, "lstm", 2, 8, embedding_dropout=0.1, weight_dropout=0.2)
    grown = grow_encoder(encoder, kv, ["river", "market"])
    assert grown.get_layer("embedding").input_dim == grown.get_layer("word_dropout").vocabulary_size == 42
    grown(np.array([[40, 41]]), training=True)  # word dropout draws a mask over the grown vocabulary
    assert not grown.get_layer("embedding").trainable
    ids = np.array([[5, 9, 12, 0]], "int32")
    np.testing.assert_allclose(grown(ids).numpy(), encoder(ids).numpy(), atol=1e-6)
    np.testing.assert_array_equal(grown.get_layer("embedding").embeddings.numpy()[40], kv["river"])
    assert not np.allclose(grown(np.array([[40, 41]])).numpy(), grown(np.array([[1, 1]])).numpy())


# --- end to end: pretrain --from and finetune open the vocabulary ---


def _vocab_words(run):
    return (run / "assets" / "tokenizer" / "vocabulary.txt").read_text(encoding="utf-8").splitlines()


def test_finetune_adds_the_task_words_that_have_a_vector_and_the_export_reads_them(tiny_runs):
    """A word the language model never saw, but that has a vector, changes the exported model's output."""
    pretrained, finetuned = tiny_runs["pretrain"], tiny_runs["finetune"]
    added = [word for word in _vocab_words(finetuned) if word not in set(_vocab_words(pretrained))]
    assert added and _vocab_words(finetuned)[: len(_vocab_words(pretrained))] == _vocab_words(pretrained)
    growth = json.loads((finetuned / "metrics.json").read_text())["open_vocabulary"]
    assert growth["added"] == len(added)
    assert growth["token_share_after"] > growth["token_share_before"]
    word = next(w for w in added if w.isalpha())
    _, probabilities = Predictor(finetuned).predict([f"the film was {word}", "the film was qzxqvj"])
    assert not np.allclose(probabilities[0], probabilities[1])


def test_a_closed_vocabulary_reads_new_words_as_unknown(tiny_runs, tmp_path):
    recipe = tiny_runs["recipe"].with_overrides(["vocab.open=false", "finetune.epochs=1", "finetune.unfreeze=all"])
    metrics = finetune(recipe, tiny_runs["pretrain"], tmp_path / "closed", tiny_runs["labeled"])
    assert "open_vocabulary" not in metrics
    assert _vocab_words(tmp_path / "closed") == _vocab_words(tiny_runs["pretrain"])


def test_pretrain_from_grows_the_vocabulary_and_the_head(tiny_runs, tmp_path):
    corpus = tmp_path / "task.txt"
    corpus.write_text("the harbour pilot steered the schooner past the lighthouse .\n" * 40, encoding="utf-8")
    recipe = tiny_runs["recipe"].with_overrides(["pretrain.epochs=1"])
    metrics = pretrain(recipe, tmp_path / "lm-task", corpus_data(corpus), from_run=tiny_runs["pretrain"])
    words = _vocab_words(tmp_path / "lm-task")
    new = words[len(_vocab_words(tiny_runs["pretrain"])) :]
    assert {"schooner", "lighthouse"} <= set(new) and metrics["open_vocabulary"]["added"] == len(new)
    assert metrics["vocab_size"] == len(words) and math.isfinite(metrics["valid"]["perplexity"])
    classifier = finetune(recipe, tmp_path / "lm-task", tmp_path / "clf", tiny_runs["labeled"])
    assert classifier["valid"]["accuracy"] >= 0.0
