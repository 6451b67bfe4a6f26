"""A model saved as a keras-hub preset loads anywhere from its files alone; format-1 runs convert once.

The loading runs where a user would run it: a fresh Python process that imports `keras` and
`tftune` and nothing else, and that never imports tftune's recipe or run-directory code.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import pytest

import preloaded_python
from conftest import PRETRAINED, snapshot

TEXTS = ["A gripping, moving film with a fine cast.", "Dull .", "the the the unknownword", ""]
VOCABULARY = ["<pad>", "<unk>", "<eos>", "a", "gripping", ",", "moving", "film", "with", "fine", "cast", ".", "dull",
              "the"]

# Loads a preset with `from_preset` (or `load_task`), predicts on raw strings, and lists what it imported.
LOAD_PRESET = """
import json, sys
import keras
import numpy as np
import tftune
path, kind, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "language_model":
    from tftune.models import LanguageModel
    model = LanguageModel.from_preset(path)
elif kind == "classifier":
    from tftune.models import TextClassifier
    model = TextClassifier.from_preset(path, num_classes=3)
else:  # straight from the submodule, before any model class is imported
    from tftune.models.preset_files import load_task
    model = load_task(path)
outputs = model.predict(texts, verbose=0)
above = sorted(name for name in sys.modules if name.split(".")[:2] in (
    ["tftune", "recipe"], ["tftune", "runs"], ["tftune", "pretrained_models"], ["tftune", "model_configs"]))
print(json.dumps({"class": type(model).__name__, "outputs": np.asarray(outputs, "float64").tolist(),
                  "imported_above_the_models": above}))
"""


def run(args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return preloaded_python.run([sys.executable, *args], capture_output=True, text=True, env=env, **kwargs)


def load_in_fresh_process(path, kind):
    result = run(["-c", LOAD_PRESET, str(path), kind, json.dumps(TEXTS)])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_task(kind):
    """A small task with random weights and a preprocessor (the weights need no training to compare)."""
    import keras

    from tftune.models import ClassifierEnsemble, LanguageModel, TextBackbone, TextClassifier, TextPreprocessor

    keras.utils.set_random_seed(3)

    def backbone():
        vectors = np.random.default_rng(0).normal(size=(len(VOCABULARY), 6)).astype("float32")
        return TextBackbone(len(VOCABULARY), 6, "gru", 2, 8, weight_dropout=0.2, embeddings=vectors)

    preprocessor = TextPreprocessor(VOCABULARY, max_len=12)
    if kind == "language_model":
        return LanguageModel(backbone(), output="tied", direction="backward", preprocessor=preprocessor)
    if kind == "classifier":
        return TextClassifier(backbone(), 3, head_units=5, preprocessor=preprocessor)
    members = [TextClassifier(backbone(), 3, head_units=5, direction=direction, name=f"classifier_{direction}")
               for direction in ("forward", "backward")]
    return ClassifierEnsemble(members, preprocessor=preprocessor)


@pytest.mark.parametrize("kind", ["language_model", "classifier", "ensemble"])
def test_a_saved_preset_loads_in_a_fresh_process_from_its_files_alone(tmp_path, kind):
    from tftune.models import save_to_preset

    model = tiny_task(kind)
    expected = model.predict(TEXTS, verbose=0)
    save_to_preset(model, tmp_path / "preset")
    files = sorted(str(path.relative_to(tmp_path / "preset")) for path in (tmp_path / "preset").rglob("*.*"))
    assert files == ["assets/tokenizer/vocabulary.txt", "config.json", "metadata.json", "model.weights.h5",
                     "preprocessor.json", "task.json", "task.weights.h5"]
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["parameter_count"] == model.count_params() and metadata["class_name"] == type(model).__name__

    loaded = load_in_fresh_process(tmp_path / "preset", kind)
    assert loaded["class"] == type(model).__name__
    assert loaded["imported_above_the_models"] == []
    np.testing.assert_allclose(loaded["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_a_classifier_from_a_language_model_preset_reads_in_its_direction_on_its_backbone(tmp_path):
    from tftune.models import TextClassifier, save_to_preset

    language_model = tiny_task("language_model")
    save_to_preset(language_model, tmp_path / "lm")
    classifier = TextClassifier.from_preset(tmp_path / "lm", num_classes=4)
    assert classifier.direction == "backward" and classifier.num_classes == 4
    for trained, loaded in zip(language_model.backbone.weights, classifier.backbone.weights, strict=True):
        np.testing.assert_array_equal(trained.numpy(), loaded.numpy())
    assert classifier.predict(TEXTS, verbose=0).shape == (len(TEXTS), 4)


def test_a_folder_that_is_no_preset_is_one_line(tmp_path):
    from tftune.errors import RunError
    from tftune.models import TextBackbone

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"empty: not a preset \(no config.json\)$"):
        TextBackbone.from_preset(tmp_path / "empty")
    with pytest.raises(RunError, match="no-such-preset: no such preset folder, nor a shipped preset of that name$"):
        TextBackbone.from_preset("no-such-preset")


# === Format-1 runs ===


def _copy_groups(source, target, prefix=""):
    import h5py

    with h5py.File(source, "r") as inp, h5py.File(target, "a") as out:
        for name in inp:
            inp.copy(inp[name], out, name=f"{prefix}{name}")


def as_format1(run_dir, out):
    """The run's files as run format 1 wrote them: the vocabulary in `vocab.txt`; a pretrain run's
    backbone weights alone (`encoder.weights.h5`) and with the head (`language_model.weights.h5`,
    the backbone under the attribute name `encoder`); a finetune run's weights in one file and its
    config in `classifier.json`."""
    from tftune.runs import FinetuneRun, Run

    shutil.copytree(run_dir, out)
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "format": 1}))
    shutil.move(out / "assets" / "tokenizer" / "vocabulary.txt", out / "vocab.txt")
    if info["kind"] == "pretrain":
        shutil.copy(out / "model.weights.h5", out / "encoder.weights.h5")
        _copy_groups(out / "task.weights.h5", out / "language_model.weights.h5")
        _copy_groups(out / "model.weights.h5", out / "language_model.weights.h5", prefix="encoder/")
    else:
        classifier = FinetuneRun.open(run_dir).load_model()
        classifier.save_weights(out / "classifier.weights.h5")
        config = json.loads((out / "task.json").read_text())
        (out / "classifier.json").write_text(json.dumps(config))
    for role in Run.preset_files:
        getattr(Run(out), role).unlink(missing_ok=True)  # the vocabulary moved above
    shutil.rmtree(out / "assets")


def fingerprint(folder):
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_format1_run_is_refused_in_one_line_then_converted_once_without_touching_it(tiny_runs, tmp_path, kind):
    import tftune

    old = tmp_path / "old"
    as_format1(tiny_runs[kind], old)
    before = fingerprint(old)
    command = (["export", str(old), "--out", str(tmp_path / "served")] if kind == "finetune"
               else ["finetune", "--from", str(old), "--train", str(tiny_runs["data"]["train"]),
                     "--out", str(tmp_path / "clf")])
    refused = run(["-m", "tftune.cli", *command])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {old}: written in run format 1; convert it once with `tftune convert {old} --out NEW_DIR`"
    ]

    converted = run(["-m", "tftune.cli", "convert", str(old), "--out", str(tmp_path / "new")])
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert fingerprint(old) == before  # the input is untouched
    expected = tftune.load(tiny_runs[kind]).predict(TEXTS, verbose=0)
    np.testing.assert_allclose(tftune.load(tmp_path / "new").predict(TEXTS, verbose=0), expected, rtol=1e-6)

    again = run(["-m", "tftune.cli", "convert", str(tmp_path / "new"), "--out", str(tmp_path / "again")])
    assert (again.returncode, again.stderr.strip()) == (
        2, f"error: {tmp_path / 'new'}: already in run format 2; nothing to convert")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["", "force"])
def test_convert_never_writes_over_into_or_around_the_run_it_converts(tmp_path, force):
    old = tmp_path / "runs" / "old"
    as_format1(PRETRAINED / "gru-glove-general", old)
    before = snapshot(tmp_path)
    for out, relation in ((old, "is"), (old / "v2", "lies inside"), (old.parent, "contains")):
        refused = run(["-m", "tftune.cli", "convert", str(old), "--out", str(out), *force])
        assert (refused.returncode, refused.stdout) == (2, "")
        assert refused.stderr.strip().splitlines() == [
            f"error: --out {out}: {relation} the format-1 run {old} (an input of this command); choose another --out"
        ]
        assert snapshot(tmp_path) == before  # the run is byte-for-byte as it was, and nothing was written
