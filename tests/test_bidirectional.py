"""Both directions in one command: `pretrain --bidirectional`, then `finetune` of the ensemble, served from
raw strings."""

import json
import os
import shutil
import sys

import pytest

import preloaded_python
from conftest import PRETRAINED, data_flags, tiny_overrides

pytestmark = pytest.mark.slow
TFTUNE = [sys.executable, "-m", "tftune.cli"]
VECTORS = PRETRAINED / "glove.6B.50d.toml"  # gru-glove's


def run_tftune(*args, env=None):
    return preloaded_python.run([*TFTUNE, *map(str, args)], capture_output=True, text=True, env=env)


def succeeds(*args):
    result = run_tftune(*args)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def presets(tiny_runs, tmp_path_factory):
    """A tiny forward preset that names its backward partner, the partner, and a forward preset without one."""
    from tftune.pretrained_models import publish
    from tftune.pretraining import pretrain
    from tftune.recipe import load_recipe

    root = tmp_path_factory.mktemp("bidirectional")
    backward_recipe = load_recipe("gru-glove", [*tiny_overrides(), "pretrain.direction=backward"])
    pretrain(backward_recipe, root / "backward-run", tiny_runs["corpus"])
    # The vectors beside the presets, as in the shipped folder (the continued runs read them).
    shipped = root / "pretrained"
    shipped.mkdir()
    for name in (VECTORS.name, "glove.6B.50d.words.txt"):
        shutil.copyfile(VECTORS.parent / name, shipped / name)
    beside = [f"embeddings.path={shipped / VECTORS.name}"]
    publish(tiny_runs["pretrain"], shipped / "tiny", overrides=beside, partners={"backward": "tiny-backward"})
    publish(root / "backward-run", shipped / "tiny-backward", overrides=beside)
    publish(tiny_runs["pretrain"], shipped / "tiny-alone", overrides=beside)
    return shipped


def directions(run):
    from tftune.runs import PretrainRun

    return {path.name: PretrainRun.open(path).recipe.pretrain.direction for path in sorted(run.iterdir())
            if not path.name.startswith(".") and path.is_dir()}


def test_one_command_pretrains_both_directions_and_finetune_serves_the_ensemble(presets, tiny_runs, tmp_path):
    data = tiny_runs["data"]
    lm, clf = tmp_path / "lm", tmp_path / "clf"
    succeeds("pretrain", "--from", presets / "tiny", "--bidirectional", *data_flags(data, "pretrain"), "--out", lm)
    assert directions(lm) == {"forward": "forward", "backward": "backward"}
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # nothing left beside it
    export = succeeds("finetune", "--from", lm, *data_flags(data, "finetune"), "--set", "finetune.epochs=1",
                      "--out", clf).strip().splitlines()[-1]  # after Keras' progress lines
    info = json.loads((clf / "run.json").read_text())
    assert [member["direction"] for member in info["members"]] == ["forward", "backward"]
    # The SavedModel, in a fresh process, from raw strings: the ensemble's test accuracy, to rounding.
    served = json.loads(succeeds("evaluate", export, "--data", data["test"]))
    trained = json.loads((clf / "metrics.json").read_text())["test"]["accuracy"]
    assert served["accuracy"] == pytest.approx(trained, abs=1e-6)
    labels = succeeds("predict", export, "a gripping, moving film", "a dull mess").splitlines()
    assert len(labels) == 2 and all(line.split("\t")[0] in served["per_class"] for line in labels)


def test_resume_trains_only_the_direction_that_was_interrupted(presets, tiny_runs, tmp_path):
    lm = tmp_path / "lm"
    flags = ["pretrain", "--from", presets / "tiny", "--bidirectional", "--out", lm]
    # Killed right after the forward run was written, before the backward one started.
    killed = run_tftune(*flags, *data_flags(tiny_runs["data"], "pretrain"),
                        env={**os.environ, "TFTUNE_FAULT": "published:kill"})
    assert killed.returncode != 0 and not lm.exists()
    refused = run_tftune(*flags, *data_flags(tiny_runs["data"], "pretrain"))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    forward_written = (tmp_path / ".lm.bidirectional" / "forward" / "model.weights.h5").stat().st_mtime_ns
    resumed = run_tftune(*flags, "--resume")  # the data the interrupted run recorded
    assert resumed.returncode == 0, resumed.stderr
    assert "forward language model already written" in resumed.stderr
    assert directions(lm) == {"forward": "forward", "backward": "backward"}
    assert (lm / "forward" / "model.weights.h5").stat().st_mtime_ns == forward_written
    assert not (lm / ".forward.checkpoint").exists()


def test_a_model_without_a_backward_partner_is_one_line_and_exit_2(presets, tiny_runs, tmp_path):
    out = tmp_path / "lm"
    result = run_tftune("pretrain", "--from", presets / "tiny-alone", "--bidirectional",
                        *data_flags(tiny_runs["data"], "pretrain"), "--out", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no backward partner" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_python_api_writes_the_same_run(presets, tiny_runs, tmp_path):
    import tftune

    both = tftune.pretrain(tiny_runs["data"]["corpus"], from_run=presets / "tiny", out=tmp_path / "lm",
                           bidirectional=True, verbose=0)
    assert set(both.model) == {"forward", "backward"}
    assert {direction: lm.direction for direction, lm in both.model.items()} == {"forward": "forward",
                                                                                 "backward": "backward"}
    assert both.metrics["backward"]["valid"]["perplexity"] > 1.0


def test_an_out_over_the_run_it_continues_is_refused_even_with_force(presets, tiny_runs, tmp_path):
    shipped = shutil.copytree(presets, tmp_path / "pretrained")
    before = sorted(path.name for path in (shipped / "tiny").iterdir())
    result = run_tftune("pretrain", "--from", shipped / "tiny", "--bidirectional",
                        *data_flags(tiny_runs["data"], "pretrain"), "--out", shipped / "tiny", "--force")
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(path.name for path in (shipped / "tiny").iterdir()) == before
    assert not (shipped / ".tiny.bidirectional").exists()


def test_the_shipped_lstm_model_continues_with_its_shipped_backward_partner(tiny_runs, tmp_path):
    """`--from lstm-glove-general --bidirectional` finds lstm-glove-general-backward among the shipped models."""
    for name, direction in (("lstm-glove-general", "backward"), ("lstm-glove-general-backward", "forward")):
        info = json.loads((PRETRAINED / name / "run.json").read_text(encoding="utf-8"))
        assert (PRETRAINED / info["partners"][direction] / "run.json").is_file()
    out = tmp_path / "lm"
    succeeds("pretrain", "--from", "lstm-glove-general", "--bidirectional", "--corpus", tiny_runs["data"]["corpus"],
             "--set", "pretrain.epochs=0", "--out", out)
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["kind"] == "bidirectional-pretrain" and set(info["members"]) == {"forward", "backward"}
    for direction in ("forward", "backward"):
        recipe = (out / direction / "recipe.toml").read_text(encoding="utf-8")
        assert f'direction = "{direction}"' in recipe
