"""Checkpoints and --resume: interrupted pretraining (SIGTERM, SIGKILL) continues where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import preloaded_python
from conftest import REPO, data_flags, tiny_corpus, tiny_overrides
from tftune.errors import RunError
from tftune.recipe import load_recipe
from tftune.finetuning import finetune
from tftune.pretraining import pretrain

pytestmark = pytest.mark.slow

# Enough epochs that a kill at the first step checkpoint (step 5 of the first epoch) lands mid-run
# with whole epochs still to train; the tests wait for that checkpoint, not for a fixed time.
EPOCHS = 3


def long_overrides():
    """A tiny model trained for a few epochs, checkpointed every 5 steps so it can be stopped mid-epoch."""
    return tiny_overrides() + [f"pretrain.epochs={EPOCHS}", "pretrain.checkpoint_every=5"]


def start_pretrain(data, out, *extra):
    args = ["pretrain", "--recipe", "gru-glove", "--out", str(out), *data_flags(data, "pretrain"), *extra]
    args += [arg for override in long_overrides() for arg in ("--set", override)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return preloaded_python.Popen(
        [sys.executable, "-m", "tftune.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoint(process, checkpoint, timeout=180):
    deadline = time.monotonic() + timeout
    while not (checkpoint / "state.json").is_file():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    return json.loads((checkpoint / "state.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    return pretrain(load_recipe("gru-glove", long_overrides()), out, tiny_corpus(small_data))


def test_sigkill_mid_epoch_then_resume_completes_the_run(small_data, tmp_path, uninterrupted):
    out, checkpoint = tmp_path / "run", tmp_path / ".run.checkpoint"
    process = start_pretrain(small_data, out)
    wait_for_checkpoint(process, checkpoint)
    process.kill()  # SIGKILL: no handler, no clean-up
    process.wait()
    assert not out.exists()
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["epochs_done"] < EPOCHS

    resumed = start_pretrain(small_data, out, "--resume")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert "resuming after epoch" in stderr
    assert not checkpoint.exists()  # removed once the run is published
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == list(range(1, EPOCHS + 1))
    # Within noise of the same run without the interruption.
    assert metrics["valid"]["perplexity"] == pytest.approx(uninterrupted["valid"]["perplexity"], rel=0.05)


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(small_data, tmp_path):
    out, checkpoint = tmp_path / "run", tmp_path / ".run.checkpoint"
    process = start_pretrain(small_data, out)
    wait_for_checkpoint(process, checkpoint)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "--resume" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert (checkpoint / "state.json").is_file()


def test_a_leftover_checkpoint_is_kept_unless_resumed_or_forced(small_data, tmp_path):
    out, checkpoint = tmp_path / "run", tmp_path / ".run.checkpoint"
    recipe = load_recipe("gru-glove", tiny_overrides())
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"kind": "pretrain", "recipe": "other"}))
    with pytest.raises(RunError, match="--resume"):
        pretrain(recipe, out, tiny_corpus(small_data))
    with pytest.raises(RunError, match="another recipe"):
        pretrain(recipe, out, tiny_corpus(small_data), resume=True)
    assert (checkpoint / "state.json").is_file() and not out.exists()
    pretrain(recipe, out, tiny_corpus(small_data), force=True)
    assert (out / "metrics.json").is_file() and not checkpoint.exists()


def test_resume_without_a_checkpoint_is_a_clear_error(small_data, tmp_path):
    with pytest.raises(RunError, match="no checkpoint to resume"):
        pretrain(load_recipe("gru-glove", tiny_overrides()), tmp_path / "run", tiny_corpus(small_data), resume=True)


class CrashAfterEpoch(keras.callbacks.Callback):
    """Raises once `epoch` (1-based, counted over the whole run) has ended: a crash between epochs."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError("simulated crash")


def test_finetune_resumes_in_the_right_unfreezing_stage(tiny_runs, tmp_path):
    from test_train import WeightLog, same

    recipe = tiny_runs["recipe"].with_overrides(["finetune.epochs=4"])  # stages: head 1, +rnn_2 1, all 2
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(recipe, tiny_runs["pretrain"], out, tiny_runs["labeled"], callbacks=[CrashAfterEpoch(2)])
    state = json.loads((tmp_path / ".run.checkpoint" / "state.json").read_text())
    assert (state["epochs_done"], state["steps_done"]) == (2, 0)

    log = WeightLog()
    metrics = finetune(recipe, tiny_runs["pretrain"], out, tiny_runs["labeled"], callbacks=[log], resume=True)
    (resumed_stage,) = log.snapshots  # one fit: the last stage, where every layer trains
    assert not same(resumed_stage["begin"]["rnn_1"], resumed_stage["end"]["rnn_1"])
    history = json.loads((out / "history.json").read_text())
    assert [(epoch["epoch"], epoch["stage"]) for epoch in history] == [(1, 1), (2, 2), (3, 3), (4, 3)]
    assert metrics["epochs"] == 4 and not (tmp_path / ".run.checkpoint").exists()


class CrashAtStep(keras.callbacks.Callback):
    """Raises at the end of step `step` (1-based) of epoch `epoch` (1-based, over the whole run)."""

    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step = epoch, step

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.current_epoch, batch + 1) == (self.epoch, self.step):
            raise RuntimeError("simulated crash")


def saved_weights(run):
    """The arrays of a finetune run's weights files (backbone and task), by file and path in it."""
    arrays = {}
    for weights_file in ("model.weights.h5", "task.weights.h5"):
        with h5py.File(run / weights_file, "r") as f:
            f.visititems(lambda name, item: arrays.update({f"{weights_file}/{name}": item[()]})
                         if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.fixture(scope="module")
def finetune_without_dropout(tiny_runs, tmp_path_factory):
    """A three-epoch fine-tuning recipe without dropout, and its uninterrupted run."""
    recipe = tiny_runs["recipe"].with_overrides(
        ["finetune.epochs=3", "finetune.dropout_scale=0", "finetune.head_dropout=0", "finetune.checkpoint_every=3"]
    )
    run = tmp_path_factory.mktemp("uninterrupted-finetune") / "run"
    finetune(recipe, tiny_runs["pretrain"], run, tiny_runs["labeled"])
    return recipe, run


@pytest.mark.parametrize("crash", [CrashAfterEpoch(2), CrashAtStep(2, 5)], ids=["between-epochs", "mid-epoch"])
def test_a_resumed_finetune_ends_with_the_weights_of_an_uninterrupted_one(
    tiny_runs, finetune_without_dropout, tmp_path, crash
):
    """Every epoch draws its batches in an order set by the seed and the epoch alone, so the resumed
    run trains on what the uninterrupted one did, with nothing replayed. Without dropout (whose
    masks are not replayed) both end with the same weights and validation history."""
    recipe, whole = finetune_without_dropout
    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(recipe, tiny_runs["pretrain"], resumed, tiny_runs["labeled"], callbacks=[crash])
    state = json.loads((tmp_path / ".resumed.checkpoint" / "state.json").read_text())
    assert (state["epochs_done"], state["steps_done"]) == ((2, 0) if isinstance(crash, CrashAfterEpoch) else (1, 3))
    finetune(recipe, tiny_runs["pretrain"], resumed, tiny_runs["labeled"], resume=True)

    expected, actual = saved_weights(whole), saved_weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    validation = [
        [{key: value for key, value in epoch.items() if key.startswith("val_")} for epoch in history]
        for history in (json.loads((run / "history.json").read_text()) for run in (whole, resumed))
    ]
    assert len(validation[0]) == len(validation[1]) == 3
    for whole_epoch, resumed_epoch in zip(*validation):
        assert resumed_epoch == pytest.approx(whole_epoch, rel=1e-6)


def test_same_seed_same_data_same_recipe_gives_the_same_metrics_on_cpu(small_data, tmp_path):
    recipe = load_recipe("gru-glove", tiny_overrides())
    first, second = (pretrain(recipe, tmp_path / name, tiny_corpus(small_data))["valid"]["perplexity"] for name in ("a", "b"))
    assert first == second


def test_a_checkpoint_written_before_a_key_existed_resumes_while_the_key_keeps_its_default():
    from tftune.checkpoints import same_training_recipe
    from tftune.recipe import load_recipe

    current = load_recipe("lstm-glove")
    older = "\n".join(line for line in current.to_toml().splitlines() if not line.startswith("stage_lr_decay"))
    assert same_training_recipe(older, current.to_toml())
    assert not same_training_recipe(older, current.with_overrides(["finetune.stage_lr_decay=2"]).to_toml())
    assert not same_training_recipe(older, current.with_overrides(["finetune.epochs=3"]).to_toml())


def test_resume_without_recipe_prints_only_tftune_lines(tiny_runs, tmp_path):
    """`--resume` reads the recipe from the checkpoint, which needs Keras: through the CLI's quiet
    TensorFlow import, so TensorFlow's C++ start-up notices never reach the terminal."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(tiny_runs["recipe"], tiny_runs["pretrain"], out, tiny_runs["labeled"], callbacks=[CrashAfterEpoch(1)])
    env = {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TFTUNE_DEBUG")}
    resumed = subprocess.run(
        [sys.executable, "-m", "tftune.cli", "finetune", "--from", str(tiny_runs["pretrain"]), "--out", str(out),
         "--resume"],
        env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "after epoch 1, step 0" in resumed.stderr  # it did resume
    assert [line for line in resumed.stderr.splitlines() if not line.startswith("tftune: ")] == []
