"""Training features as callbacks: best weights, stage history, live TensorBoard, and their resume state."""

import logging
import re

import keras
import numpy as np

from tftune.callbacks import KeepBestWeights, RunProgress, StageHistory, restore_plugins, tensorboard
from tftune.checkpoints import Checkpointing, RunCheckpoint


def test_keep_best_weights_restores_the_best_epoch_and_stops_after_patience():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = KeepBestWeights(patience=2)
    best.set_model(model)
    weights_by_epoch = []
    for epoch, accuracy in enumerate([0.5, 0.7, 0.7, 0.6, 0.65]):
        model.set_weights([np.full((2, 1), epoch, "float32"), np.zeros(1, "float32")])
        weights_by_epoch.append(model.get_weights())
        best.on_epoch_end(epoch, {"val_accuracy": accuracy})
        if best.stopped:
            break
    assert best.stopped and epoch == 4  # two epochs without a better accuracy after epoch 3
    assert best.best_epoch == 3  # a tie goes to the later epoch
    best.restore()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights_by_epoch[2]))


def test_plugins_get_their_state_back_from_one_checkpoint(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    history, best = StageHistory(), KeepBestWeights(patience=3)
    history.set_stage(2, ["rnn_2"])
    for plugin in (history, best):
        plugin.set_model(model)
    history.on_epoch_end(0, {"loss": 1.5, "val_accuracy": 0.25})
    best.on_epoch_end(0, {"val_accuracy": 0.25})
    best.on_epoch_end(1, {"val_accuracy": 0.125})
    checkpoint = RunCheckpoint(tmp_path / "run")
    saver = Checkpointing(checkpoint, lambda epochs, steps: {"recipe": "", "epochs_done": epochs}, [history, best])
    saver.set_model(model)
    saver.on_epoch_end(1)

    state = checkpoint.load_state()
    assert state["epochs_done"] == 2 and set(state) >= {"history", "best"}  # one file, each plugin under its key
    again, again_best = StageHistory(), KeepBestWeights(patience=3)
    restore_plugins([again, again_best], state, checkpoint.load_arrays)
    assert again.epochs == [{"epoch": 1, "stage": 2, "trainable_layers": ["rnn_2"], "loss": 1.5, "val_accuracy": 0.25}]
    assert again_best.get_state() == best.get_state() == {
        "best_accuracy": 0.25, "best_epoch": 1, "stopped": False, "epochs_without_gain": 1}
    assert all(np.array_equal(a, b) for a, b in zip(again_best.best_weights, model.get_weights()))


def test_tensorboard_curves_are_written_during_training(tmp_path):
    """Keras' own callback: an event file per split as soon as training starts, a scalar per epoch."""
    import tensorflow as tf

    seen_during_training = []

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen_during_training.append(sorted(path.name for path in tmp_path.iterdir()))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = np.zeros((8, 2), "float32")
    model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=2, verbose=0,
              callbacks=[tensorboard(tmp_path), Look()])
    assert seen_during_training[0] == ["train", "validation"]
    steps = []
    for event_file in (tmp_path / "train").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            steps += [event.step for value in event.summary.value if value.tag == "epoch_loss"]
    assert sorted(steps) == [0, 1]


class Messages(logging.Handler):
    """The messages logged to a logger, whatever other tests did to the root logger's handlers."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_run_progress_numbers_the_epochs_of_every_fit_call_and_logs_the_run_eta(capsys, monkeypatch):
    logger, logged = logging.getLogger("tftune"), Messages()
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logger, "handlers", [logged])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
    # A second classifier of an ensemble, after a first one's 2 epochs: stages of 1 and 2 epochs.
    progress = RunProgress(total_epochs=5, epoch_offset=2)
    model.fit(x, y, epochs=1, verbose=2, callbacks=[progress])
    model.fit(x, y, initial_epoch=1, epochs=3, verbose=2, callbacks=[progress])
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert headers == ["Epoch 3/5", "Epoch 4/5", "Epoch 5/5"]  # Keras alone: none, "Epoch 2/3", "Epoch 3/3"
    etas = [message.rsplit(" ", 1) for message in logged.messages if "of the run, ETA" in message]
    assert [prefix for prefix, _ in etas] == [f"epoch {k}/5 of the run, ETA" for k in (3, 4, 5)]
    assert etas[-1][1] == "00:00" and all(re.fullmatch(r"\d\d:\d\d", eta) for _, eta in etas)
