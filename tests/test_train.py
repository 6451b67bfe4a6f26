"""Pretraining and fine-tuning on real (small) data: run contents and gradual unfreezing."""

import json

import keras
import numpy as np
import pytest

from conftest import tiny_overrides
from tftune.errors import RunError
from tftune.recipe import load_recipe
from tftune.train import finetune, load_pretrain_run, pretrain

pytestmark = pytest.mark.slow


def test_pretrain_run_holds_what_finetune_needs(tiny_runs):
    run = tiny_runs["pretrain"]
    for name in ("recipe.toml", "vocab.txt", "encoder.weights.h5", "history.json", "metrics.json", "run.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    # A model that learned nothing sits at the vocabulary size; a trained one is far below.
    assert 1 < metrics["valid"]["perplexity"] < metrics["vocab_size"]
    assert metrics["train_tokens_per_second"] > 0
    assert len(json.loads((run / "history.json").read_text())) == 1
    assert not list(run.parent.glob(".pretrain.tmp-*")), "staging directory left behind"


def test_finetune_run_has_metrics_labels_and_export(tiny_runs):
    run = tiny_runs["finetune"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["valid"]["accuracy"] <= 1
    assert {"accuracy", "macro_f1"} <= set(metrics["test"])
    assert json.loads((run / "labels.json").read_text()) == ["negative", "positive"]
    assert (run / "export" / "saved_model.pb").is_file()
    stages = [epoch["stage"] for epoch in json.loads((run / "history.json").read_text())]
    assert stages == [1, 2, 3]


class WeightLog(keras.callbacks.Callback):
    """Copies every recurrent layer's weights at the start and end of each fit call."""

    def __init__(self):
        super().__init__()
        self.snapshots = []

    def _snapshot(self):
        encoder = self.model.get_layer("encoder")
        return {
            layer.name: [w.copy() for w in layer.get_weights()]
            for layer in encoder.layers
            if layer.name.startswith("rnn_") and not layer.name.endswith("dropout")
        } | {"embedding": encoder.get_layer("embedding").get_weights()[0].copy()}

    def on_train_begin(self, logs=None):
        self.snapshots.append({"begin": self._snapshot()})

    def on_train_end(self, logs=None):
        self.snapshots[-1]["end"] = self._snapshot()


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_gradual_unfreezing_freezes_exactly_the_right_layers(tiny_runs, tmp_path):
    log = WeightLog()
    finetune(tiny_runs["recipe"], tiny_runs["pretrain"], tmp_path / "run", callbacks=[log])
    head_only, top, everything = log.snapshots
    # Stage 1: head only; both recurrent layers and the embedding bit-for-bit unchanged.
    assert same(head_only["begin"]["rnn_1"], head_only["end"]["rnn_1"])
    assert same(head_only["begin"]["rnn_2"], head_only["end"]["rnn_2"])
    # Stage 2: the top layer trains, the bottom one is still frozen.
    assert not same(top["begin"]["rnn_2"], top["end"]["rnn_2"])
    assert same(top["begin"]["rnn_1"], top["end"]["rnn_1"])
    # Stage 3: all recurrent layers train.
    assert not same(everything["begin"]["rnn_1"], everything["end"]["rnn_1"])
    # The embedding never moves.
    assert np.array_equal(head_only["begin"]["embedding"], everything["end"]["embedding"])


def test_finetune_starts_from_pretrained_weights(tiny_runs, tmp_path):
    log = WeightLog()
    finetune(tiny_runs["recipe"], tiny_runs["pretrain"], tmp_path / "run", callbacks=[log])
    pretrained = load_pretrain_run(tiny_runs["pretrain"])
    assert pretrained.vocab.tokens[:3] == ["<pad>", "<unk>", "<eos>"]
    from tftune.train import restore_encoder

    encoder = restore_encoder(pretrained, dropout=0.0)
    assert same(encoder.get_layer("rnn_1").get_weights(), log.snapshots[0]["begin"]["rnn_1"])


def test_finetune_refuses_an_encoder_that_differs_from_the_pretrain_run(tiny_runs, tmp_path):
    recipe = tiny_runs["recipe"].with_overrides(["encoder.units=32"])
    with pytest.raises(RunError, match="encoder.units"):
        finetune(recipe, tiny_runs["pretrain"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_finetune_refuses_a_changed_vocabulary(tiny_runs, tmp_path):
    import shutil

    copy = tmp_path / "pretrain"
    shutil.copytree(tiny_runs["pretrain"], copy)
    tokens = (copy / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens[10], tokens[11] = tokens[11], tokens[10]
    (copy / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with pytest.raises(RunError, match="vocabulary"):
        finetune(tiny_runs["recipe"], copy, tmp_path / "run")


def test_existing_output_is_kept_without_force(tiny_runs, small_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("results")
    recipe = load_recipe("gru-glove", tiny_overrides(small_data))
    with pytest.raises(RunError, match="--force"):
        pretrain(recipe, out)
    assert (out / "keep.txt").read_text() == "results"


def test_a_run_being_written_cannot_be_written_by_a_second_process(small_data, tmp_path):
    from tftune.runs import exclusive_output

    out = tmp_path / "run"
    recipe = load_recipe("gru-glove", tiny_overrides(small_data))
    with exclusive_output(out, force=False):
        with pytest.raises(RunError, match="another tftune process"):
            pretrain(recipe, out)
    assert not out.exists()
    assert not (tmp_path / ".run.lock").exists()


def test_non_finite_loss_stops_with_an_error_and_writes_nothing(tiny_runs, tmp_path):
    from tftune.errors import TrainingError

    recipe = tiny_runs["recipe"].with_overrides(["finetune.learning_rate=1e30", "finetune.schedule=constant"])
    with pytest.raises(TrainingError, match="nothing was written"):
        finetune(recipe, tiny_runs["pretrain"], tmp_path / "run")
    assert not (tmp_path / "run").exists()
