"""Tests of tftune.resources: a recipe's parameters and training memory, estimated before anything is built."""

import re

import keras
import pytest

from tftune.errors import RecipeError
from tftune.recipe import load_recipe
from tftune.resources import check_fits, estimate_training_memory, format_size, parse_size


@pytest.mark.parametrize("cell", ["simple_rnn", "lstm", "gru"])
def test_recurrent_parameters_match_a_built_keras_stack(cell):
    """The count is Keras' own for the encoder's layers (GRU with reset_after: two biases)."""
    recipe = load_recipe("gru-glove", [f"encoder.cell={cell}", "encoder.units=24", "encoder.layers=2",
                                       "pretrain.output=tied"])
    layer = {"simple_rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell]
    stack = keras.Sequential([keras.Input((None, 50)), layer(24, return_sequences=True), layer(24)])
    vocab, dim = 100, 50
    tied_head = 24 * dim + dim
    expected = vocab * dim + stack.count_params() + tied_head
    assert estimate_training_memory(recipe, "pretrain", vocabulary_size=vocab, embedding_dim=dim).parameters == expected


def test_memory_grows_with_the_settings_that_drive_it():
    base = load_recipe("gru-glove")
    small = estimate_training_memory(base, "pretrain", embedding_dim=50)
    wide = estimate_training_memory(base.with_overrides(["encoder.units=4096"]), "pretrain", embedding_dim=50)
    assert wide.bytes > 10 * small.bytes
    assert "encoder.units" in wide.largest
    full = estimate_training_memory(base.with_overrides(["vocab.max_size=2000000"]), "pretrain", embedding_dim=50)
    assert "vocabulary" in full.largest


def test_a_recipe_over_the_limit_is_refused_with_its_estimate():
    recipe = load_recipe("gru-glove", ["encoder.units=4096"])
    with pytest.raises(RecipeError) as info:
        check_fits(recipe, "pretrain", limit=parse_size("1G"), embedding_dim=50)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"needs about [\d.]+ GB to pretrain \([\d,]+ parameters", message)
    assert "more than --max-memory (1.0 GB)" in message
    assert "encoder.units" in message
    assert check_fits(load_recipe("gru-glove"), "finetune", limit=parse_size("1G"), embedding_dim=50).bytes < 2**30


@pytest.mark.parametrize("text, size", [("2G", 2**31), ("512mb", 2**29), ("1.5k", 1536), ("1000", 1000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "5Q"])
def test_parse_size_refuses_what_is_no_size(text):
    with pytest.raises(RecipeError, match="--max-memory"):
        parse_size(text)


def test_format_size():
    assert [format_size(n) for n in (512, 1536, 5 * 2**30)] == ["512 B", "1.5 KB", "5.0 GB"]
