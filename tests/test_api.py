"""The Python API (`import tftune`): texts in memory in, Keras models out."""

import random
import runpy
import sys
import threading
from pathlib import Path

import pytest

import tftune
from tftune.errors import DataError, RecipeError

ROOT = Path(__file__).resolve().parents[1]


def test_the_quickstart_example_runs_as_written(tmp_path, monkeypatch):
    """The notebook-style example fine-tunes the shipped model on the shipped data, predicts and saves."""
    import keras

    monkeypatch.setattr(sys, "argv", ["quickstart.py", str(tmp_path)])
    policy = keras.mixed_precision.global_policy().name
    namespace = runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert namespace["classifier"].metrics["valid"]["accuracy"] > 0.5  # six authors: chance is about 1/6
    assert len(namespace["labels"]) == 2 and set(namespace["labels"]) <= set(namespace["train_labels"])
    loaded = keras.saving.load_model(tmp_path / "authors.keras")
    assert type(loaded).__name__ == "TextClassifier" and loaded.get_config() == namespace["model"].get_config()
    # The examples given in memory are files beside the run, named by content, and the run names them.
    data_files = sorted(path.name for path in (tmp_path / ".authors.data").iterdir())
    assert [name.split("-")[0] for name in data_files] == ["train", "valid"]
    assert all(name in (tmp_path / "authors" / "recipe.toml").read_text() for name in data_files)
    assert keras.mixed_precision.global_policy().name == policy


def test_pretrain_on_a_list_continues_a_shipped_model_and_returns_it(tmp_path, capfd):
    import keras
    import numpy as np

    texts = ["The whale rose beside the ship.", "She smiled at the ball and said nothing."] * 40
    result, epochs_seen = {}, []
    counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs_seen.append(epoch))
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    # Off the main thread, as in a notebook's background job: no signal handlers are installed there.
    thread = threading.Thread(target=lambda: result.update(trained=tftune.pretrain(
        texts, from_run="lstm-glove-general", out=tmp_path / "lm",
        settings={"pretrain.epochs": 1, "pretrain.seq_len": 10, "pretrain.batch_size": 4},
        callbacks=[counter], verbose=0,
    )))
    thread.start()
    thread.join()
    trained = result["trained"]
    assert type(trained.model).__name__ == "LanguageModel" and trained.run == tmp_path / "lm"
    assert trained.metrics["train_tokens"] > 0 and trained.metrics["valid"]["perplexity"] > 1
    assert epochs_seen == [0] and len(trained.history.history["loss"]) == 1
    assert (random.random(), np.random.rand()) == expected  # the caller's random state is back
    assert "/step" not in capfd.readouterr().out  # verbose=0 reached Keras' fit
    assert type(tftune.load(tmp_path / "lm")).__name__ == "LanguageModel"


@pytest.mark.parametrize(
    "train, words",
    [
        ((["a", "b"], ["x"]), "2 texts but 1 labels"),
        (([1, 2], ["x", "y"]), "expected strings only"),
        ("missing.csv", "missing.csv"),
        (([], []), "no examples"),
        ({"texts": []}, "expected (texts, labels)"),
    ],
)
def test_bad_examples_are_one_clear_error_before_training(tmp_path, train, words):
    with pytest.raises((DataError, RecipeError), match=words.replace("(", r"\(").replace(")", r"\)")):
        tftune.finetune("lstm-glove-general", train, out=tmp_path / "clf")
    assert not (tmp_path / "clf").exists()


def test_settings_are_checked_like_the_recipe(tmp_path):
    with pytest.raises(RecipeError, match="finetune.epochs must be an int"):
        tftune.finetune("lstm-glove-general", (["a", "b"], ["x", "y"]), out=tmp_path / "clf",
                        settings={"finetune.epochs": "many"})


def test_the_api_is_there_without_importing_tensorflow_first():
    assert set(tftune.__all__) == {"pretrain", "finetune", "load", "predict", "interpret", "register_keras_objects"}
    assert all(callable(getattr(tftune, name)) for name in tftune.__all__)
    with pytest.raises(AttributeError):
        tftune.train_everything  # noqa: B018
