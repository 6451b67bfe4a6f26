"""Shipped pretrained language models, found by name wherever a pretrain run is taken."""

import json

import pytest

from tftune import pretrained_models as presets
from tftune.errors import RunError


def _preset(directory, name, perplexity=123.4):
    path = directory / name
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"kind": "pretrain", "format": 2}))
    (path / "README.md").write_text(f"# {name}\n")
    (path / "metrics.json").write_text(json.dumps({"train_tokens": 1000, "valid": {"perplexity": perplexity}}))
    (path / "recipe.toml").write_text(f'name = "{name}"\ndescription = "LSTM on a test corpus"\n')
    return path


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    directory = tmp_path / "pretrained"
    _preset(directory, "lstm-test-general")
    (directory / "authors").mkdir()  # data folders are not presets
    (directory / "not-a-card").mkdir()
    (directory / "not-a-card" / "run.json").write_text(json.dumps({"kind": "pretrain", "format": 2}))
    monkeypatch.setattr(presets, "PRETRAINED_DIR", directory)
    return directory


def test_list_presets_reads_each_model_card_and_metrics(shipped):
    (found,) = presets.list_presets()
    assert (found.name, found.description, found.train_tokens, found.perplexity) == (
        "lstm-test-general", "LSTM on a test corpus", 1000, 123.4,
    )
    assert found.size_bytes == sum(f.stat().st_size for f in found.path.iterdir())


def test_a_name_resolves_to_the_preset_and_a_directory_wins(shipped, tmp_path, monkeypatch):
    assert presets.resolve_run("lstm-test-general") == shipped / "lstm-test-general"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lstm-test-general").mkdir()
    assert presets.resolve_run("lstm-test-general").resolve() == tmp_path / "lstm-test-general"
    assert presets.resolve_run("runs/missing") == presets.Path("runs/missing")


def test_an_unknown_name_says_what_is_shipped(shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError, match=r"no-such-lm: no such run directory, nor a pretrained model of that name "
                                       r"\(pretrained: lstm-test-general\)"):
        presets.resolve_run("no-such-lm")


# --- publishing a run, and the shipped presets ---


def float_dtypes(path):
    """The dtypes of the float arrays of a weights file."""
    import h5py

    dtypes = set()
    with h5py.File(path) as weights:
        weights.visititems(lambda name, item: dtypes.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    return {dtype.name for dtype in dtypes if dtype.kind == "f"}


def test_publish_stores_float16_weights_and_the_preset_fine_tunes(tiny_runs, tmp_path):
    from tftune.finetuning import finetune

    preset = presets.publish(tiny_runs["pretrain"], tmp_path / "pretrained" / "tiny-general")
    assert float_dtypes(preset / "model.weights.h5") == float_dtypes(preset / "task.weights.h5") == {"float16"}
    assert not (preset / "logs").exists()
    # The recipe names no data (data are arguments), only the vectors, relative to the preset.
    assert "corpus" not in (preset / "recipe.toml").read_text()
    recipe = tiny_runs["recipe"].with_overrides(["finetune.epochs=1", "finetune.unfreeze=all"])
    metrics = finetune(recipe, preset, tmp_path / "clf", tiny_runs["labeled"])
    assert 0.0 <= metrics["valid"]["accuracy"] <= 1.0


def test_a_preset_continues_with_the_training_sections_of_the_shipped_recipe(tiny_runs, tmp_path):
    from tftune.recipe import Recipe, load_recipe

    preset = presets.publish(tiny_runs["pretrain"], tmp_path / "pretrained" / "tiny-general",
                             continue_with="lstm-glove", description="a tiny general LM")
    recipe, run, shipped = (Recipe.from_toml_file(preset / "recipe.toml"), tiny_runs["recipe"],
                            load_recipe("lstm-glove"))
    assert recipe.description == "a tiny general LM"
    for section in ("vocab", "encoder"):  # the model is the run's
        assert getattr(recipe, section) == getattr(run, section)
    for section in ("precision", "distribute"):  # how to train is the shipped recipe's
        assert getattr(recipe, section) == getattr(shipped, section)
    for key in ("unfreeze", "stage_epochs", "epochs", "learning_rate", "schedule"):
        assert getattr(recipe.finetune, key) == getattr(shipped.finetune, key)
    for key in ("epochs", "learning_rate", "ar", "tar"):
        assert getattr(recipe.pretrain, key) == getattr(shipped.pretrain, key)


@pytest.mark.parametrize("name", presets.preset_names())
def test_each_shipped_preset_loads_by_name_and_has_a_model_card(name):
    import math

    import numpy as np

    from tftune.models import LanguageModel, TextBackbone, TextClassifier
    from tftune.runs import PretrainRun

    pretrained = PretrainRun.open(presets.resolve_run(name))
    assert presets.Path(pretrained.recipe.embeddings.path).is_file()
    # What runs continuing from it train with: fine-tuning unfreezes gradually.
    assert pretrained.recipe.finetune.unfreeze == "gradual"
    # The tasks load the same backbone by the preset's name.
    model = LanguageModel.from_preset(name)
    assert model.output_kind == pretrained.recipe.pretrain.output
    classifier = TextClassifier.from_preset(name, num_classes=4)
    backbone = TextBackbone.from_preset(name)
    for loaded in (model.backbone, classifier.backbone):
        assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), backbone.get_weights()))
    assert classifier.predict(["the film was a delight"], verbose=0).shape == (1, 4)  # its preprocessor came along
    # Shipped as float16, half the size of float32.
    for weights in (pretrained.backbone_weights, pretrained.task_weights):
        assert float_dtypes(weights) == {"float16"}
    ids = np.array([pretrained.vocab.ids(pretrained.tokenizer.tokenize("the film was a delight from start to end ."))])
    loss = model.compute_loss(y=ids[:, 1:], y_pred=model(ids[:, :-1]))
    assert math.isfinite(float(loss)) and float(loss) < math.log(len(pretrained.vocab))
    card = (pretrained.path / "README.md").read_text(encoding="utf-8").lower()
    for topic in ("corpus", "tokens", "perplexity", "licen", "tftune pretrain", "epochs"):
        assert topic in card, f"the model card of {name} says nothing of {topic}"
