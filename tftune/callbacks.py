"""Training features as Keras callbacks: plugins around one `fit`, each carrying its own resume state.

In the spirit of flair's trainer plugins, every feature of a training run is a callback passed
to `fit`: throughput, the stop on a non-finite loss, the per-epoch history, the best epoch's
weights, live TensorBoard logs, and checkpoints (`tftune.checkpoints.Checkpointing`). A feature
with progress to keep across an interruption is a `Plugin`: it names its state (`state_key`)
and hands it over as JSON (`get_state`) and named arrays (`get_arrays`). The checkpoint gathers
every plugin's state into one file, and `restore_plugins` gives each its own back on resume,
so no training function needs to know what a feature keeps.

Example:

```python
history, best = StageHistory(), KeepBestWeights(patience=2)
saver = Checkpointing(RunCheckpoint("runs/clf"), progress, plugins=[history, best])
model.fit(data, epochs=4, callbacks=[history, best, StopOnNonFiniteLoss(), saver])
```
"""

import logging
import math
import time

import keras

from tftune.errors import TrainingError

_logger = logging.getLogger(__name__)


class Plugin(keras.callbacks.Callback):
    """A callback whose progress is saved with the run's checkpoint and given back on resume.

    Subclasses set `state_key` (its entry in the checkpoint's `state.json`) and override
    `get_state`/`set_state`, and `get_arrays`/`set_arrays` for weights.
    """

    state_key = None

    def get_state(self):
        """The progress to checkpoint, as JSON-serializable data."""
        return None

    def set_state(self, state):
        """Takes back what `get_state` returned."""

    def get_arrays(self):
        """Named lists of arrays to checkpoint (e.g. weights), `{name: [array, ...]}`."""
        return {}

    def set_arrays(self, arrays):
        """Takes back what `get_arrays` returned (`{name: [array, ...]}`)."""


def plugin_states(plugins):
    """`{state_key: state}` of every plugin, for a checkpoint's state."""
    return {plugin.state_key: plugin.get_state() for plugin in plugins}


def plugin_arrays(plugins):
    """Every plugin's named arrays, for a checkpoint."""
    arrays = {}
    for plugin in plugins:
        arrays.update(plugin.get_arrays())
    return arrays


def restore_plugins(plugins, state, load_arrays):
    """Gives each plugin its state from a checkpoint's `state`, and its arrays through `load_arrays(name)`."""
    for plugin in plugins:
        plugin.set_state(state[plugin.state_key])
        names = plugin.get_arrays().keys()
        plugin.set_arrays({name: load_arrays(name) for name in names})


class Throughput(keras.callbacks.Callback):
    """Training tokens per second of step time, leaving out the first (tracing) step.

    Both wall-clock and CPU time are kept: the CPU figure (all threads of this process) is
    what to compare on a machine shared with other jobs, where wall time depends on them.

    Args:
        tokens_per_step: tokens in one (global) batch.

    Example:

    ```python
    throughput = Throughput(tokens_per_step=64 * 70)
    model.fit(data, callbacks=[throughput])
    throughput.tokens_per_second, throughput.tokens_per_cpu_second
    ```
    """

    def __init__(self, tokens_per_step):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.steps = 0
        self._first_step_done = False

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        if not self._first_step_done:
            self._first_step_done = True
            return
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start
        self.steps += 1

    @property
    def tokens_per_second(self):
        return self.steps * self.tokens_per_step / self.seconds if self.seconds else None

    @property
    def tokens_per_cpu_second(self):
        return self.steps * self.tokens_per_step / self.cpu_seconds if self.cpu_seconds else None


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first non-finite training loss with an error instead of a ruined model.

    Placed before the checkpoint callback, so the last checkpoint written stays a good one.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"training loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; "
                "nothing was written (try a lower learning rate, or precision.policy=float32)"
            )


class StageHistory(Plugin):
    """Collects per-epoch logs across several `fit` calls, tagged with the unfreezing stage.

    Example:

    ```python
    history = StageHistory()
    history.stage = {"stage": 1, "trainable_layers": []}
    model.fit(data, epochs=1, callbacks=[history])
    history.epochs  # [{"epoch": 1, "stage": 1, "trainable_layers": [], "loss": ...}]
    ```
    """

    state_key = "history"

    def __init__(self):
        super().__init__()
        self.epochs = []
        self.stage = None

    def set_stage(self, number, trainable_layers):
        """Tags the epochs that follow with the unfreezing stage (`fit_unfreezing_stages` calls it)."""
        self.stage = {"stage": number, "trainable_layers": list(trainable_layers)}

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        if self.stage is not None:
            record.update(self.stage)
        record.update({key: float(value) for key, value in (logs or {}).items()})
        self.epochs.append(record)

    def get_state(self):
        return self.epochs

    def set_state(self, state):
        self.epochs = list(state)


class KeepBestWeights(Plugin):
    """Remembers the weights of the best epoch by validation accuracy, across several `fit` calls.

    Ties go to the later epoch (more training at the same accuracy). With `patience` > 0 it
    stops training after that many epochs without improvement and sets `stopped`.

    Args:
        patience: epochs without a better validation accuracy before stopping; 0 = never stop.

    Example:

    ```python
    best = KeepBestWeights(patience=2)
    model.fit(data, validation_data=valid, epochs=10, callbacks=[best])
    best.restore()  # the weights of best.best_epoch
    ```
    """

    state_key = "best"

    def __init__(self, patience=0):
        super().__init__()
        self.patience = patience
        self.best_accuracy = -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped = False
        self._epochs_without_gain = 0

    def on_epoch_end(self, epoch, logs=None):
        accuracy = float((logs or {}).get("val_accuracy", -math.inf))
        if accuracy >= self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch + 1
            self.best_weights = self.model.get_weights()
            self._epochs_without_gain = 0
            return
        self._epochs_without_gain += 1
        if self.patience and self._epochs_without_gain >= self.patience:
            self.model.stop_training = self.stopped = True

    def restore(self, model=None):
        """Puts the best epoch's weights into `model` (default: the model it watched): a run resumed
        after its last epoch fits nothing, so this callback never saw a model."""
        (self.model if model is None else model).set_weights(self.best_weights)

    def get_state(self):
        accuracy = self.best_accuracy if math.isfinite(self.best_accuracy) else None
        return {"best_accuracy": accuracy, "best_epoch": self.best_epoch, "stopped": self.stopped,
                "epochs_without_gain": self._epochs_without_gain}

    def set_state(self, state):
        accuracy = state["best_accuracy"]
        self.best_accuracy = -math.inf if accuracy is None else accuracy
        self.best_epoch, self.stopped = state["best_epoch"], state["stopped"]
        self._epochs_without_gain = state["epochs_without_gain"]

    def get_arrays(self):
        return {"best": self.best_weights or []}

    def set_arrays(self, arrays):
        self.best_weights = arrays.get("best") or None


def tensorboard(log_dir):
    """Keras' own `TensorBoard` callback, writing per-epoch scalars to `log_dir` while training runs.

    `tensorboard --logdir LOG_DIR` shows the curves live; each `fit` call (an unfreezing stage,
    a resumed run) adds its epochs to the same curves, numbered from the run's first epoch.
    """
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, update_freq="epoch")


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, counting the epochs of a whole run over several `fit` calls, with the run's ETA.

    Gradual unfreezing fits each stage in its own `fit` call. Passed to each of them, this bar
    numbers every epoch's header of the run (`Epoch 2/3`), the first epoch of a one-epoch stage
    included (Keras' own bar prints no header when a `fit` call has one epoch), and after each
    epoch logs "epoch k/K of the run, ETA mm:ss" from the mean time of the epochs seen so far.

    Args:
        total_epochs: the epochs of the whole run.
        epoch_offset: the run's epochs before Keras' epoch 0 of the next `fit` calls (those of
            the classifiers an ensemble trained before this one); Keras numbers the epochs of a
            resumed `fit` itself (`initial_epoch`).

    Example:

    ```python
    progress = RunProgress(total_epochs=3)
    model.fit(data, epochs=1, callbacks=[progress])  # Epoch 1/3 ... epoch 1/3 of the run, ETA 00:42
    model.fit(data, initial_epoch=1, epochs=3, callbacks=[progress])  # Epoch 2/3, Epoch 3/3
    ```
    """

    def __init__(self, total_epochs, epoch_offset=0):
        super().__init__()
        self.total_epochs = total_epochs
        self.epoch_offset = epoch_offset
        self._epoch_seconds = []

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs  # the header's N: the run's epochs, not this `fit` call's

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        super().on_epoch_begin(self.epoch_offset + epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._epoch_seconds.append(time.perf_counter() - self._epoch_start)
        done = self.epoch_offset + epoch + 1
        if self.verbose:
            mean = sum(self._epoch_seconds) / len(self._epoch_seconds)
            minutes, seconds = divmod(round(mean * max(0, self.total_epochs - done)), 60)
            _logger.info(f"epoch {done}/{self.total_epochs} of the run, ETA {minutes:02d}:{seconds:02d}")
