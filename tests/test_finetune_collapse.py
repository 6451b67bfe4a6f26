"""Fine-tuning a shipped language model with its own recipe keeps learning as the encoder unfreezes.

A learning rate too high for an encoder shows only once its recurrent layers train: the
gradients explode and the training accuracy falls back towards chance after the head-only stage
had already lifted it. `gru-glove-general` at a peak rate of 0.01 did exactly this: on these
400 passages, training accuracy 0.38 (head), 0.65 (`rnn_2` unfrozen), 0.50 (both layers); at its
recipe's 0.002, 0.31, 0.58, 0.73. Batches of 8 give the short run enough optimizer steps to show it.
"""

import csv
import json
import sys

import pytest

import preloaded_python
from conftest import PRETRAINED

pytestmark = pytest.mark.slow
AUTHORS = PRETRAINED / "authors"


def authors_passages(source, target, per_label, words=30):
    """The first `per_label` passages of each author in `source`, cut to `words` words, as a CSV."""
    with open(source, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    picked, counts = [], {}
    for row in rows:
        if counts.get(row["label"], 0) < per_label:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
            picked.append([" ".join(row["text"].split()[:words]), row["label"]])
    with open(target, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *picked])
    return target


def test_unfreezing_the_gru_preset_does_not_lower_training_accuracy(tmp_path):
    train = authors_passages(AUTHORS / "train.csv", tmp_path / "train.csv", per_label=80)
    valid = authors_passages(AUTHORS / "valid.csv", tmp_path / "valid.csv", per_label=10)
    out = tmp_path / "clf"
    # The preset's own recipe; only the run is made short: one epoch per stage (head, rnn_2, both).
    result = preloaded_python.run(
        [sys.executable, "-m", "tftune.cli", "finetune", "--from", "gru-glove-general", "--train", train,
         "--valid", valid, "--out", out, "--set", "finetune.epochs=3", "--set", "finetune.batch_size=8"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    assert [epoch["trainable_layers"] for epoch in history] == [[], ["rnn_2"], ["rnn_1", "rnn_2"]]
    accuracy = [epoch["accuracy"] for epoch in history]
    # Each stage that unfreezes a layer ends at least as accurate on its training data as the one before.
    assert accuracy[1] >= accuracy[0] and accuracy[2] >= accuracy[1], accuracy
