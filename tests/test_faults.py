"""Fault injection: a run stopped at any moment of `pretrain`, `finetune` or `export` leaves
nothing a later command could mistake for a result, and the same command (with `--resume` once
there is a checkpoint) finishes it with the result of an uninterrupted run.

Each case runs the command with `TFTUNE_FAULT=POINT:ACTION[:N]` (see `tftune.staging.fault_point`):
it stops the Nth time it reaches POINT, by SIGKILL, SIGTERM, SIGINT, or an `ENOSPC` raised from
the write. SIGKILL needs a process of its own; the other stops run the command line in this
process (its handlers are the CLI's), which keeps the file fast. The recipe has no dropout, so a
resumed run ends with the very weights of the uninterrupted one.
"""

import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import preloaded_python
from conftest import REPO, data_flags, tiny_overrides
from tftune.cli import main

pytestmark = pytest.mark.slow

NO_DROPOUT = [f"encoder.{key}=0" for key in ("dropout", "weight_dropout", "embedding_dropout", "input_dropout",
                                               "hidden_dropout", "output_dropout")] + ["finetune.head_dropout=0"]
# What depends on the machine's load, not on the training.
UNSTABLE_METRICS = ("wall_seconds", "train_tokens_per_second", "train_tokens_per_cpu_second")
EXIT = {"kill": -signal.SIGKILL, "term": 130, "int": 130, "enospc": 1}


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def tftune(args, fault=None):
    """Runs the command line: in a new process to be killed, else in this one (faster: TensorFlow is loaded)."""
    args = [str(arg) for arg in args]
    if fault is not None and fault.split(":")[1] == "kill":
        env = {**os.environ, "PYTHONPATH": str(REPO), "TFTUNE_FAULT": fault}
        done = preloaded_python.run([sys.executable, "-m", "tftune.cli", *args], env=env, capture_output=True, text=True,
                              timeout=600)
        return Result(done.returncode, done.stdout, done.stderr)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.MonkeyPatch.context() as patch:
            if fault is not None:
                patch.setenv("TFTUNE_FAULT", fault)
            result = CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return Result(result.exit_code, result.stdout, result.stderr)


def overrides():
    # The full softmax: a sampled one draws other words after a resume.
    return tiny_overrides() + NO_DROPOUT + ["pretrain.output=full", "pretrain.epochs=2", "finetune.epochs=2",
                                                "finetune.unfreeze=all"]


def settings():
    return [arg for override in overrides() for arg in ("--set", override)]


def pretrain_args(data, out):
    return ["pretrain", "--recipe", "gru-glove", "--out", out, *data_flags(data, "pretrain"), *settings()]


def finetune_args(data, from_run, out):
    return ["finetune", "--from", from_run, "--recipe", "gru-glove", "--out", out, *data_flags(data, "finetune"),
            *settings()]


def weights(path):
    """Every array of a `.weights.h5` file, by its path in the file."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return arrays


def stable_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in UNSTABLE_METRICS}


def assert_same_run(run, reference):
    assert stable_metrics(run) == stable_metrics(reference)
    for weights_file in ("model.weights.h5", "task.weights.h5"):  # the backbone's, and the task's other weights
        ours, theirs = weights(run / weights_file), weights(reference / weights_file)
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7, err_msg=f"{weights_file} {name}")


def debris(folder):
    """Hidden files beside the runs (staging folders, locks, checkpoints, backups, live logs)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """An uninterrupted pretrain run and finetune run from it, through the CLI."""
    root = tmp_path_factory.mktemp("reference")
    for args in (pretrain_args(small_data, root / "pretrain"), finetune_args(small_data, root / "pretrain", root / "finetune")):
        result = tftune(args)
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith(("error:", "internal error:"))]


def assert_stopped(result, action):
    """The stopped command's status, and one line on stderr saying why unless it was killed."""
    assert result.returncode == EXIT[action], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Segmentation" not in result.stderr
    if action != "kill":
        (line,) = error_lines(result.stderr)
        assert line.startswith("error:")
        if action == "enospc":
            assert "No space left on device" in line and "nothing was written" in line


# (POINT, ACTION): during training (while a checkpoint is written), in the middle of writing the
# run's files, between staging and publishing, and once published but before the checkpoint goes.
PRETRAIN_FAULTS = [("checkpoint:term:1", "term"), ("run-file:enospc:2", "enospc"), ("publish:kill", "kill"),
                   ("published:int", "int")]
FINETUNE_FAULTS = [("checkpoint:int:1", "int"), ("export:enospc", "enospc"), ("run-file:term:3", "term"),
                   ("published:kill", "kill")]


def resume_after(args, out, fault, action):
    stopped = tftune(args, fault)
    if fault.startswith("published:") and stopped.returncode == 0:
        # The signal came once the run was published: whether it still finds something to
        # interrupt depends on when the handler runs. Either way the run must be whole (below).
        assert not error_lines(stopped.stderr)
    else:
        assert_stopped(stopped, action)
    checkpoint = out.with_name(f".{out.name}.checkpoint")
    if out.exists() and not checkpoint.exists():  # stopped once the run was published: it is complete
        return stopped
    resumed = tftune([*args, "--resume"] if checkpoint.is_dir() else args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not error_lines(resumed.stderr)
    return resumed


@pytest.mark.parametrize("fault, action", PRETRAIN_FAULTS, ids=[fault for fault, _ in PRETRAIN_FAULTS])
def test_a_stopped_pretrain_run_resumes_to_the_uninterrupted_result(small_data, reference, tmp_path, fault, action):
    out = tmp_path / "pretrain"
    resume_after(pretrain_args(small_data, out), out, fault, action)
    assert_same_run(out, reference / "pretrain")
    assert debris(tmp_path) == []


@pytest.mark.parametrize("fault, action", FINETUNE_FAULTS, ids=[fault for fault, _ in FINETUNE_FAULTS])
def test_a_stopped_finetune_run_resumes_to_the_uninterrupted_result(small_data, reference, tmp_path, fault, action):
    out = tmp_path / "finetune"
    resumed = resume_after(finetune_args(small_data, reference / "pretrain", out), out, fault, action)
    assert_same_run(out, reference / "finetune")
    assert debris(tmp_path) == [] and debris(out) == []
    if action == "kill":  # the dead process's lock and checkpoint: said in one line
        (line,) = [line for line in resumed.stderr.splitlines() if "cleaned up" in line]
        assert str(out) in line


@pytest.mark.parametrize("fault, action", [("export:term", "term"), ("export-publish:kill", "kill"),
                                           ("export:enospc", "enospc")])
def test_a_stopped_export_leaves_nothing_and_a_rerun_writes_it(reference, tmp_path, fault, action):
    out = tmp_path / "export"
    stopped = tftune(["export", reference / "finetune", "--out", out], fault)
    assert_stopped(stopped, action)
    assert not out.exists()
    rerun = tftune(["export", reference / "finetune", "--out", out])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert debris(tmp_path) == []
    assert (out / "saved_model.pb").read_bytes() and json.loads((out / "assets.extra" / "labels.json").read_text())
    predicted = tftune(["predict", out, "a gripping , moving film", "dull and far too long"])
    reference_predicted = tftune(["predict", reference / "finetune", "a gripping , moving film", "dull and far too long"])
    assert predicted.stdout == reference_predicted.stdout and predicted.stdout.count("\n") == 2


def test_sigterm_before_training_writes_nothing(small_data, tmp_path):
    """SIGTERM while the run reads its data (the lock is held, nothing trains yet) ends as Ctrl-C does."""
    out = tmp_path / "pretrain"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = preloaded_python.Popen([sys.executable, "-m", "tftune.cli", *map(str, pretrain_args(small_data, out))], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".pretrain.lock"
    while not lock.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert error_lines(stderr) == ["error: interrupted; nothing was written"]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path):
    """`mount(size, options)`: a folder on a tmpfs of `size` bytes (root only), unmounted afterwards."""
    mounted = []

    def mount(size, options=""):
        folder = tmp_path / "disk"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_nothing(small_data, full_disk):
    """A real full disk (not a simulated error): h5py fails inside the checkpoint's weights file."""
    disk = full_disk("256k")  # less than the first checkpoint
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = preloaded_python.run([sys.executable, "-m", "tftune.cli", *map(str, pretrain_args(small_data, disk / "run"))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = error_lines(done.stderr)
    assert ".run.checkpoint: writing the checkpoint failed (No space left on device)" in line
    assert "Traceback" not in done.stderr
    assert list(disk.iterdir()) == []


def test_a_full_disk_during_an_export_is_one_line_and_leaves_nothing(reference, full_disk):
    disk = full_disk("64k")
    result = tftune(["export", reference / "finetune", "--out", disk / "export"])
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = error_lines(result.stderr)
    assert "No space left on device" in line and "nothing was written" in line
    assert list(disk.iterdir()) == []


def test_a_read_only_folder_is_named_in_one_line(small_data, full_disk):
    disk = full_disk("64k", ",ro")
    result = tftune(pretrain_args(small_data, disk / "run"))
    assert result.returncode == 1, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        f"error: {disk / 'run'}: cannot write in the folder {disk} (Read-only file system); nothing was written"]
