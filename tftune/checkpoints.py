"""Checkpoints of a run in progress, so that an interrupted run can be resumed with `--resume`.

A run's checkpoint lives beside its output directory, in `.NAME.checkpoint/`, and holds what it
takes to go on: the model's weights, the optimizer's variables (Adam's moments, its step counter
and, under `mixed_float16`, the loss scale) and a `state.json` with the progress (epoch, step,
unfreezing stage, history so far) and the recipe it was written with. Every checkpoint is
written to a temporary directory and renamed over the previous one, so a crash while saving
leaves the previous checkpoint whole. The checkpoint is removed once the run is published.

SIGINT and SIGTERM stop training at the next step boundary, write a checkpoint and end with
`Interrupted`, whose message says how to resume.

Example:

>>> checkpoint = RunCheckpoint("runs/my-lm")  # doctest: +SKIP
>>> checkpoint.exists()  # doctest: +SKIP
False
"""

import json
import shutil
import signal
import tempfile
import threading
import tomllib
import uuid
from pathlib import Path

import keras
import numpy as np

from tftune.callbacks import plugin_arrays, plugin_states
from tftune.errors import Interrupted, RecipeError, RunError, WriteError
from tftune.recipe import Recipe
from tftune.output_paths import hidden_sibling, live_logs
from tftune.runs import CHECKPOINT_STATE
from tftune.staging import close_failed_h5_files, fault_point, replace_directory, write_failure

STATE = CHECKPOINT_STATE
WEIGHTS = "model.weights.h5"
OPTIMIZER = "optimizer.npz"
# The recipe again, as a file: `--resume` without `--recipe` loads it.
RECIPE = "recipe.toml"


class RunCheckpoint:
    """The checkpoint directory of the run that will be published at `out`.

    Args:
        out: the run's output directory (the checkpoint is the hidden sibling `.NAME.checkpoint`).
    """

    def __init__(self, out):
        out = Path(out)
        self.out = out
        self.path = hidden_sibling(out, "checkpoint")
        # Names the run across its checkpoints and resumes; its published `run.json` records it.
        self.run_id = None

    @property
    def logs(self):
        """The run's live TensorBoard logs, beside the checkpoint (`tftune.output_paths.live_logs`)."""
        return live_logs(self.out)

    @property
    def recipe_file(self):
        """The recipe the run started with, saved with each checkpoint (`--resume` without `--recipe`)."""
        return self.path / RECIPE

    def exists(self):
        return (self.path / STATE).is_file()

    def save(self, model, state, arrays=None):
        """Writes `model`'s weights, its optimizer's variables, `state` (JSON) and named lists of
        arrays (e.g. the best epoch's weights), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = self.run_id or uuid.uuid4().hex
        state = {**state, "run_id": self.run_id}
        staging = Path(tempfile.mkdtemp(prefix=f"{self.path.name}.tmp-", dir=self.path.parent))
        try:
            model.save_weights(staging / WEIGHTS)
            fault_point("checkpoint")
            variables = [keras.ops.convert_to_numpy(variable) for variable in model.optimizer.variables]
            np.savez(staging / OPTIMIZER, *variables)
            for name, values in (arrays or {}).items():
                np.savez(staging / f"{name}.npz", *values)
            (staging / STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            (staging / RECIPE).write_text(state["recipe"], encoding="utf-8")
            replace_directory(staging, self.path)
        except BaseException as error:
            close_failed_h5_files(staging)
            shutil.rmtree(staging, ignore_errors=True)
            reason = write_failure(error) if isinstance(error, Exception) else None
            if reason is None:
                raise
            kept = "the last checkpoint is kept" if self.exists() else "no checkpoint was written"
            raise WriteError(f"{self.path}: writing the checkpoint failed ({reason}); {kept}") from error

    def load_state(self):
        """The saved progress; a clear error when there is no checkpoint to resume."""
        if not self.exists():
            raise RunError(f"{self.out}: no checkpoint to resume ({self.path} does not exist); run without --resume")
        try:
            state = json.loads((self.path / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunError(f"{self.path / STATE}: unreadable checkpoint ({e}); run again with --force") from None
        self.run_id = state.get("run_id") if isinstance(state, dict) else None
        return state

    def restore(self, model):
        """Loads the weights into `model` and the variables into its (compiled) optimizer.

        The optimizer is built on the model's trainable variables first, so its variables
        exist in the same order as when they were saved.
        """
        optimizer = model.optimizer
        if not optimizer.built:
            # Built before `load_weights`, which otherwise skips (and warns about) the optimizer's
            # variables when a LossScaleOptimizer has not created its own yet.
            optimizer.build(model.trainable_variables)
        model.load_weights(self.path / WEIGHTS)
        values = self.load_arrays(Path(OPTIMIZER).stem)
        if [tuple(value.shape) for value in values] != [tuple(variable.shape) for variable in optimizer.variables]:
            raise RunError(f"{self.path}: the optimizer state does not fit this model; run again with --force")
        for variable, value in zip(optimizer.variables, values):
            variable.assign(value)

    def load_arrays(self, name):
        """A list of arrays saved under `name` by `save`."""
        with np.load(self.path / f"{name}.npz", allow_pickle=False) as saved:
            return [saved[f"arr_{index}"] for index in range(len(saved.files))]

    def remove(self):
        """Removes the checkpoint, its state first: a removal cut short leaves no resumable half."""
        (self.path / STATE).unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)


def check_resumable(checkpoint, kind, recipe):
    """The saved state of `checkpoint` when it is a `kind` run written with the same recipe."""
    state = checkpoint.load_state()
    if state.get("kind") != kind:
        raise RunError(f"{checkpoint.path}: a checkpoint of a {state.get('kind')} run, not of a {kind} run")
    if not same_training_recipe(state.get("recipe"), recipe.to_toml()):
        raise RunError(
            f"{checkpoint.path}: written with another recipe; resume with the same recipe and --set values "
            "(without --recipe, the checkpoint's own recipe is used)"
        )
    return state


# How a run is spread over devices, not what it trains: a run may resume under another strategy.
EXECUTION_SECTIONS = ("distribute",)


def same_training_recipe(saved, current):
    """Whether two recipes (TOML text) train the same thing, whatever their `[distribute]` sections.

    A key that the saved recipe lacks (added to the schema since it was written) counts as its
    default, so a checkpoint of an earlier version resumes when the new key keeps its default.
    """
    if saved == current:
        return True
    try:
        saved, current = (Recipe(tomllib.loads(text)).to_dict() for text in (saved or "", current))
    except (tomllib.TOMLDecodeError, RecipeError):
        return False
    for section in EXECUTION_SECTIONS:
        saved.pop(section, None)
        current.pop(section, None)
    return saved == current


class Checkpointing(keras.callbacks.Callback):
    """Writes a checkpoint after every epoch, every `every_steps` steps, and on SIGINT/SIGTERM.

    One checkpoint gathers the whole run's progress: the model and its optimizer, the training
    function's own `progress` (where it is: epoch, step, stage), and the state and arrays of every
    `tftune.callbacks.Plugin` (history, best weights, ...), each under its `state_key`.

    On a signal, training stops at the next step boundary, the checkpoint is written and
    `Interrupted` is raised with a message saying how to resume. The handlers are installed for
    the training only, and the caller's put back after it. Python delivers signals to the main
    thread alone, so a run started on another thread (a notebook's background job, a server's
    worker) installs none and keeps the per-epoch and `every_steps` checkpoints.

    Args:
        checkpoint: the `RunCheckpoint` to write.
        progress: a callable `(epochs_done, steps_done_in_epoch) -> dict` giving the training
            function's progress to save.
        plugins: the `tftune.callbacks.Plugin`s whose states are saved too.
        every_steps: also save every this many steps inside an epoch (0 = only at epoch ends).
        resume_hint: the command that resumes the run, for the interruption message.
        arrays: an optional callable returning more named lists of arrays to save.
    """

    def __init__(self, checkpoint, progress, plugins=(), every_steps=0, resume_hint="--resume", arrays=None):
        super().__init__()
        self.checkpoint = checkpoint
        self.progress = progress
        self.plugins = list(plugins)
        self.arrays = arrays or dict
        self.every_steps = every_steps
        self.resume_hint = resume_hint
        self.signal_received = None
        self.step_offset = 0  # steps of the current epoch done before this fit (a resumed epoch)
        self._previous_handlers = {}

    def on_train_begin(self, logs=None):
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal raises off the main thread, which never receives signals anyway
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[number] = signal.signal(number, self._on_signal)

    def on_train_end(self, logs=None):
        self._restore_handlers()

    def _restore_handlers(self):
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}

    def _on_signal(self, number, frame):
        self.signal_received = signal.Signals(number).name

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_offset + batch + 1
        if self.signal_received is not None:
            self._save(self.epoch, step)
            self._restore_handlers()
            raise Interrupted(
                f"{self.checkpoint.out}: stopped by {self.signal_received} at epoch {self.epoch + 1}, step {step}; "
                f"checkpoint written, resume with {self.resume_hint}"
            )
        if self.every_steps and step % self.every_steps == 0:
            self._save(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        self._save(epoch + 1, 0)

    def _save(self, epochs_done, steps_done):
        state = {**self.progress(epochs_done, steps_done), **plugin_states(self.plugins)}
        self.checkpoint.save(self.model, state, {**self.arrays(), **plugin_arrays(self.plugins)})
