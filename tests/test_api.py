"""The Python API (`import tftune`): texts in memory in, Keras models out."""

import json
import random
import runpy
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import preloaded_python

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
    # The examples given in memory stay in memory: nothing is written beside the run but the run
    # (and the .keras file the example saves); run.json records what they were.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["authors", "authors.keras"]
    inputs = json.loads((tmp_path / "authors" / "run.json").read_text())["inputs"]
    assert inputs["train"]["examples"] == len(namespace["train_texts"]) and len(inputs["train"]["sha256"]) == 64
    assert inputs["valid"]["examples"] == len(namespace["valid"][0]) and inputs.get("test") is None
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


def test_finetune_without_training_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"^no training data: give the labeled examples to fine-tune on"):
        tftune.finetune("lstm-glove-general", out=tmp_path / "clf")
    assert list(tmp_path.iterdir()) == []


def test_a_data_key_in_settings_names_the_argument_to_use(tmp_path):
    with pytest.raises(RecipeError, match="finetune.train is no longer a recipe setting.*pass --train"):
        tftune.finetune("lstm-glove-general", (["a", "b"], ["x", "y"]), out=tmp_path / "clf",
                        settings={"finetune.train": "train.csv"})


# A finetune request on lists, resolved and checked as `tftune.finetune` does before it trains.
PLAN_ON_LISTS = """
import json, sys
from tftune import api
texts, labels = ["a gripping film", "dull and long"], ["pos", "neg"]
plan = api.plan_finetune("lstm-glove-general", (texts, labels), valid=sys.argv[1], out=sys.argv[2])
print(json.dumps({"fingerprints": plan.data.fingerprints(), "pandas": "pandas" in sys.modules,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_the_api_takes_lists_without_importing_pandas_or_tensorflow(tmp_path):
    valid = tmp_path / "valid.csv"
    valid.write_text("text,label\nfine,pos\n", encoding="utf-8")
    # subprocess, not preloaded_python: what a new process imports is the point
    result = subprocess.run([sys.executable, "-c", PLAN_ON_LISTS, str(valid), str(tmp_path / "clf")],
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["pandas"] is False and report["tensorflow"] is False
    fingerprints = report["fingerprints"]
    assert fingerprints["train"]["examples"] == 2 and len(fingerprints["train"]["sha256"]) == 64
    [file] = fingerprints["valid"]
    assert file["path"] == str(valid) and file["size"] == valid.stat().st_size and len(file["sha256"]) == 64
    assert fingerprints["reading"] == {"text_column": "text", "label_column": "label", "encoding": "utf-8"}


def interrupted_finetune(tiny_runs, out):
    """A finetune run started through the API and stopped after its first epoch, checkpoint written.

    Its recipe differs from the pretrain run's (head_units), so a resume shows whose recipe it used.
    """
    import keras

    class CrashAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("simulated crash")

    data = tiny_runs["data"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        tftune.finetune(tiny_runs["pretrain"], str(data["train"]), valid=str(data["valid"]), out=out, verbose=0,
                        settings={"finetune.head_units": 7, "finetune.unfreeze": "all", "finetune.epochs": 2},
                        callbacks=[CrashAfterFirstEpoch()])
    assert (out.parent / f".{out.name}.checkpoint").is_dir() and not out.exists()


@pytest.mark.slow
def test_resume_behaves_the_same_through_the_command_line_and_the_api(tiny_runs, tmp_path):
    """Both take the checkpoint's recipe and its recorded data files, and write the same run."""
    import shutil

    by_cli, by_api = tmp_path / "by-cli", tmp_path / "by-api"
    interrupted_finetune(tiny_runs, by_cli)
    shutil.copytree(tmp_path / ".by-cli.checkpoint", tmp_path / ".by-api.checkpoint")
    command = [sys.executable, "-m", "tftune.cli", "finetune", "--from", str(tiny_runs["pretrain"]), "--out"]
    # Other data than the checkpoint's are refused, in one line naming the input.
    other = tmp_path / "other.csv"
    other.write_text("text,label\nfine,positive\nawful,negative\n", encoding="utf-8")
    refused = preloaded_python.run([*command, str(by_cli), "--resume", "--train", str(other)], capture_output=True,
                             text=True)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == (
        f"error: --train file {other}: not the data the interrupted run was trained on; resume with the same "
        "data, or start over with --force"), refused.stderr

    resumed = preloaded_python.run([*command, str(by_cli), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    metrics = tftune.finetune(tiny_runs["pretrain"], out=by_api, resume=True, verbose=0).metrics

    files = [sorted(str(path.relative_to(run)) for path in run.rglob("*") if "logs" not in path.parts)
             for run in (by_cli, by_api)]
    assert files[0] == files[1]
    recipes = [(run / "recipe.toml").read_text() for run in (by_cli, by_api)]
    assert recipes[0] == recipes[1] and "head_units = 7" in recipes[0]  # the checkpoint's, not the pretrain run's
    infos = [json.loads((run / "run.json").read_text()) for run in (by_cli, by_api)]
    assert infos[0]["inputs"] == infos[1]["inputs"]
    assert infos[0]["inputs"]["train"][0]["path"] == str(tiny_runs["data"]["train"])
    assert json.loads((by_cli / "metrics.json").read_text())["valid"] == metrics["valid"]
