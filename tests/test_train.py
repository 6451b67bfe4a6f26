"""Pretraining and fine-tuning on real (small) data: run contents and gradual unfreezing."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from conftest import tiny_corpus, tiny_overrides
from tftune.inputs import corpus_data
from tftune.errors import RunError
from tftune.finetuning import finetune
from tftune.pretraining import pretrain
from tftune.recipe import load_recipe
from tftune.runs import FinetuneRun, PretrainRun

pytestmark = pytest.mark.slow


def test_pretrain_run_holds_what_finetune_needs(tiny_runs):
    run = tiny_runs["pretrain"]
    for name in ("recipe.toml", "history.json", "metrics.json", "run.json", "config.json", "task.json",
                 "preprocessor.json", "assets/tokenizer/vocabulary.txt", "model.weights.h5", "task.weights.h5",
                 "metadata.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    # A model that learned nothing sits at the vocabulary size; a trained one is far below.
    assert 1 < metrics["valid"]["perplexity"] < metrics["vocab_size"]
    assert metrics["train_tokens_per_second"] > 0 and metrics["train_tokens_per_cpu_second"] > 0
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


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_history_also_goes_to_tensorboard_logs(tiny_runs, kind):
    """The curves TensorBoard showed live move into the run: `tensorboard --logdir RUN/logs`."""
    import tensorflow as tf

    run = tiny_runs[kind]
    assert not (run.parent / f".{run.name}.logs").exists()
    validation = {}
    for events in (run / "logs").rglob("validation/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == "epoch_loss":
                    validation[event.step] = float(tf.make_ndarray(value.tensor))
    history = json.loads((run / "history.json").read_text())
    assert [validation[step] for step in sorted(validation)] == pytest.approx([epoch["val_loss"] for epoch in history])


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
    finetune(tiny_runs["recipe"], tiny_runs["pretrain"], tmp_path / "run", tiny_runs["labeled"], callbacks=[log])
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


def test_each_unfreezing_stage_peaks_lower_by_stage_lr_decay():
    from tftune.unfreezing import stage_learning_rate

    settings = load_recipe("lstm-glove").with_overrides(
        ["finetune.learning_rate=0.01", "finetune.stage_lr_decay=2.0", "finetune.schedule=stlr"]).finetune
    peaks = []
    for stage in range(3):
        schedule = stage_learning_rate(settings, start_step=100 * stage, steps=100, stage=stage)
        peaks.append(max(float(schedule(step)) for step in range(100 * stage, 100 * stage + 100)))
    np.testing.assert_allclose(peaks, [0.01, 0.005, 0.0025], rtol=1e-6)
    assert stage_learning_rate(dataclasses.replace(settings, schedule="constant"), 0, 10, stage=1) == 0.005


def test_finetune_starts_from_pretrained_weights(tiny_runs, tmp_path):
    log = WeightLog()
    finetune(tiny_runs["recipe"], tiny_runs["pretrain"], tmp_path / "run", tiny_runs["labeled"], callbacks=[log])
    pretrained = PretrainRun.open(tiny_runs["pretrain"])
    assert pretrained.vocab.tokens[:3] == ["<pad>", "<unk>", "<eos>"]
    from tftune.models import TextBackbone

    encoder = TextBackbone.from_preset(pretrained.path)
    assert same(encoder.get_layer("rnn_1").get_weights(), log.snapshots[0]["begin"]["rnn_1"])


def test_finetune_refuses_an_encoder_that_differs_from_the_pretrain_run(tiny_runs, tmp_path):
    recipe = tiny_runs["recipe"].with_overrides(["encoder.units=32"])
    with pytest.raises(RunError, match="encoder.units"):
        finetune(recipe, tiny_runs["pretrain"], tmp_path / "run", tiny_runs["labeled"])
    assert not (tmp_path / "run").exists()


def test_finetune_refuses_a_changed_vocabulary(tiny_runs, tmp_path):
    import shutil

    copy = tmp_path / "pretrain"
    shutil.copytree(tiny_runs["pretrain"], copy)
    vocabulary = copy / "assets" / "tokenizer" / "vocabulary.txt"
    tokens = vocabulary.read_text(encoding="utf-8").splitlines()
    tokens[10], tokens[11] = tokens[11], tokens[10]
    vocabulary.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with pytest.raises(RunError, match="vocabulary"):
        finetune(tiny_runs["recipe"], copy, tmp_path / "run", tiny_runs["labeled"])


def test_existing_output_is_kept_without_force(tiny_runs, small_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("results")
    recipe = load_recipe("gru-glove", tiny_overrides())
    with pytest.raises(RunError, match="--force"):
        pretrain(recipe, out, tiny_runs["corpus"])
    assert (out / "keep.txt").read_text() == "results"


def test_a_run_being_written_cannot_be_written_by_a_second_process(small_data, tmp_path):
    from tftune.run_lock import exclusive_output

    out = tmp_path / "run"
    recipe = load_recipe("gru-glove", tiny_overrides())
    with exclusive_output(out, force=False):
        with pytest.raises(RunError, match="another tftune process"):
            pretrain(recipe, out, tiny_corpus(small_data))
    assert not out.exists()
    assert not (tmp_path / ".run.lock").exists()


def test_non_finite_loss_stops_with_an_error_and_writes_nothing(tiny_runs, tmp_path):
    from tftune.errors import TrainingError

    recipe = tiny_runs["recipe"].with_overrides(["finetune.learning_rate=1e30", "finetune.schedule=constant"])
    with pytest.raises(TrainingError, match="nothing was written"):
        finetune(recipe, tiny_runs["pretrain"], tmp_path / "run", tiny_runs["labeled"])
    assert not (tmp_path / "run").exists()


class OptimizerLog(keras.callbacks.Callback):
    """Records, at the start of each fit call, the optimizer's step, rate and head moments."""

    def __init__(self):
        super().__init__()
        self.stages = []

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        head_kernel = self.model.trainable_variables[-1]
        moment = optimizer._momentums[optimizer._get_variable_index(head_kernel)]
        self.stages.append(
            {
                "iterations": int(optimizer.iterations),
                "learning_rate": float(optimizer.learning_rate),
                "head_moment": np.abs(keras.ops.convert_to_numpy(moment)).sum(),
            }
        )


def test_one_optimizer_keeps_its_state_across_unfreezing_stages(tiny_runs, tmp_path):
    log = OptimizerLog()
    metrics = finetune(tiny_runs["recipe"], tiny_runs["pretrain"], tmp_path / "run", tiny_runs["labeled"], callbacks=[log])
    steps = [stage["iterations"] for stage in log.stages]
    assert steps[0] == 0 and steps[1] > 0 and steps[2] == 2 * steps[1]  # the step counter carries on
    assert log.stages[0]["head_moment"] == 0 and log.stages[1]["head_moment"] > 0  # Adam's moments too
    # Each stage starts a new slanted triangular cycle at its lowest rate.
    peak = tiny_runs["recipe"].finetune.learning_rate
    assert [stage["learning_rate"] for stage in log.stages] == pytest.approx([peak / 32] * 3)
    assert metrics["epochs"] == 3 and metrics["weights_from_epoch"] == metrics["best_epoch"]


def test_balanced_class_weights():
    from tftune.labeled_task import balanced_class_weights

    assert balanced_class_weights([0, 0, 0, 1], 2) == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}


def test_finetune_with_class_weights_and_early_stopping(tiny_runs, tmp_path):
    recipe = tiny_runs["recipe"].with_overrides(
        ["finetune.class_weight=balanced", "finetune.patience=1", "finetune.unfreeze=all", "finetune.epochs=6"]
    )
    metrics = finetune(recipe, tiny_runs["pretrain"], tmp_path / "run", tiny_runs["labeled"])
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert metrics["epochs"] == len(history) <= 6
    assert metrics["stopped_early"] == (len(history) < 6)
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], i))
    assert metrics["weights_from_epoch"] == best + 1


def test_pretrain_from_a_run_continues_its_encoder_on_new_text(tiny_runs, tmp_path):
    base = tiny_runs["pretrain"]
    task_text = corpus_data(tiny_runs["data"]["train"])
    # Zero epochs: the continued run holds exactly the base run's weights and (closed) vocabulary.
    untouched = tiny_runs["recipe"].with_overrides(["pretrain.epochs=0", "vocab.open=false"])
    before = pretrain(untouched, tmp_path / "zero", task_text, from_run=base)
    vocabulary = "assets/tokenizer/vocabulary.txt"
    assert (tmp_path / "zero" / vocabulary).read_text() == (base / vocabulary).read_text()
    info = json.loads((tmp_path / "zero" / "run.json").read_text())
    assert info["from_run"] == str(base) and info["vocab_fingerprint"] == PretrainRun.open(base).vocab.fingerprint()
    from tftune.models import TextBackbone

    weights = [TextBackbone.from_preset(run).get_weights() for run in (base, tmp_path / "zero")]
    assert same(*weights)
    # Two epochs on the task's text lower the perplexity on held-out task text.
    after = pretrain(untouched.with_overrides(["pretrain.epochs=2"]), tmp_path / "two", task_text, from_run=base)
    assert after["valid"]["perplexity"] < before["valid"]["perplexity"]
    assert after["vocab_size"] == before["vocab_size"] == len(PretrainRun.open(base).vocab)
    finetune(tiny_runs["recipe"], tmp_path / "two", tmp_path / "classifier", tiny_runs["labeled"])
    assert (tmp_path / "classifier" / "export" / "saved_model.pb").is_file()


def test_pretrain_from_a_run_refuses_another_encoder(tiny_runs, tmp_path):
    recipe = tiny_runs["recipe"].with_overrides(["encoder.units=32"])
    with pytest.raises(RunError, match="encoder.units"):
        pretrain(recipe, tmp_path / "run", tiny_runs["corpus"], from_run=tiny_runs["pretrain"])
    assert not (tmp_path / "run").exists()


def test_zero_epoch_pretrain_is_an_untrained_encoder_to_fine_tune_from_scratch(tiny_runs, tmp_path):
    metrics = pretrain(tiny_runs["recipe"].with_overrides(["pretrain.epochs=0"]), tmp_path / "scratch", tiny_runs["corpus"])
    assert json.loads((tmp_path / "scratch" / "history.json").read_text()) == []
    assert metrics["train_tokens_per_second"] is None
    trained = json.loads((tiny_runs["pretrain"] / "metrics.json").read_text())
    assert metrics["valid"]["perplexity"] > trained["valid"]["perplexity"]
    finetune(tiny_runs["recipe"], tmp_path / "scratch", tmp_path / "classifier", tiny_runs["labeled"])


def test_forward_and_backward_runs_fine_tune_into_one_averaging_export(tiny_runs, tmp_path):
    from tftune.export import Predictor
    from tftune.models import ClassifierEnsemble
    from tftune.finetuning import reexport

    backward = tmp_path / "backward"
    lm = pretrain(tiny_runs["recipe"].with_overrides(["pretrain.direction=backward"]), backward, tiny_runs["corpus"])
    assert 1 < lm["valid"]["perplexity"] < lm["vocab_size"]
    with pytest.raises(RunError, match="direction"):  # a backward run continues only as a backward one
        pretrain(tiny_runs["recipe"], tmp_path / "mixed", tiny_runs["corpus"], from_run=backward)

    run = tmp_path / "ensemble"
    metrics = finetune(tiny_runs["recipe"], [tiny_runs["pretrain"], backward], run, tiny_runs["labeled"])
    members = metrics["members"]
    assert [member["direction"] for member in members] == ["forward", "backward"]
    assert all({"valid", "test", "best_epoch"} <= set(member) for member in members)
    assert {epoch["member"] for epoch in json.loads((run / "history.json").read_text())} == {
        "classifier_forward", "classifier_backward"}
    # The export averages the members' probabilities; a re-export gives the same model.
    texts = ["a gripping , moving film .", "dull and far too long", ""]
    served = Predictor(run / "export").predict(texts)[1]
    assert np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
    reexport(run, tmp_path / "again")
    assert np.allclose(Predictor(tmp_path / "again").predict(texts)[1], served, atol=1e-6)
    # Both rebuild the trained model from the config the run keeps, head dropout included.
    model = FinetuneRun.open(run).load_model()
    assert isinstance(model, ClassifierEnsemble)
    assert [member.direction for member in model.members] == ["forward", "backward"]
    assert {member.head_dropout for member in model.members} == {tiny_runs["recipe"].finetune.head_dropout}


def test_a_call_runs_off_the_main_thread_and_leaves_the_dtype_policy_as_it_was(tiny_runs, tmp_path):
    import signal
    import threading

    recipe = tiny_runs["recipe"].with_overrides(["precision.policy=mixed_float16"])
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    seen = {}

    def train():  # as a notebook's background job would
        try:
            keras.mixed_precision.set_global_policy("float32")
            seen["pretrain"] = pretrain(recipe, tmp_path / "lm", tiny_runs["corpus"])["precision_policy"]
            seen["after_pretrain"] = keras.mixed_precision.global_policy().name
            seen["finetune"] = finetune(recipe, tmp_path / "lm", tmp_path / "clf", tiny_runs["labeled"])["precision_policy"]
            seen["after_finetune"] = keras.mixed_precision.global_policy().name
        except Exception as e:  # reported below, in the test's thread
            seen["error"] = repr(e)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert "error" not in seen, seen.get("error")
    assert seen == {"pretrain": "mixed_float16", "after_pretrain": "float32",
                    "finetune": "mixed_float16", "after_finetune": "float32"}
    assert {number: signal.getsignal(number) for number in handlers} == handlers
