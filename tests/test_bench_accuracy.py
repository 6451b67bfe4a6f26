"""`python -m bench.accuracy`: a long run that stops resumes where it stopped (`--resume-dir`), and
the bidirectional row reports its ensemble and each member.

Each command is a real `--smoke` run on TREC-6 (a tiny LM of the recipe, one epoch of the Keras
baseline on 120 questions), so the file takes about two minutes.
"""

import json
import os
import sys
from pathlib import Path

import pytest

import preloaded_python

REPO = Path(__file__).resolve().parents[1]
TREC6 = REPO.parent / "shared" / "data" / "trec6" / "train_5500.label"
# The keras row of a GRU recipe on word2vec, its cell and vectors taken from the recipe.
COMMAND = ["--smoke", "--tasks", "trec6", "--rows", "keras", "--recipe", "gru-word2vec", "--baselines-from", "recipe"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not TREC6.is_file(), reason="TREC-6 is not in ../shared/data beside the checkout")]


def accuracy(*args):
    """`(exit status, the JSON result or None, stderr)` of `python -m bench.accuracy ARGS`."""
    completed = preloaded_python.run([sys.executable, "-m", "bench.accuracy", *map(str, args)], cwd=REPO,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True)
    lines = completed.stdout.strip().splitlines()
    return completed.returncode, json.loads(lines[0]) if lines else None, completed.stderr


def keras_seeds(result):
    return result["tasks"]["trec6"]["rows"]["keras"]["seeds"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`(results folder, JSON result)` of the command at seed 0 with a fresh --resume-dir."""
    store = tmp_path_factory.mktemp("accuracy") / "results"
    status, result, stderr = accuracy(*COMMAND, "--seeds", "0", "--resume-dir", store)
    assert status == 0, stderr[-3000:]
    return store, result


def test_keras_row_takes_the_cell_and_vectors_of_the_recipe(first_run):
    _, result = first_run
    row = result["tasks"]["trec6"]["rows"]["keras"]
    assert "frozen word2vec 300d, GRU(16)" in row["description"] and "gru-word2vec" in row["description"]
    assert row["seeds"][0]["settings"]["cell"] == "gru"
    assert row["seeds"][0]["settings"]["vectors"] == "pretrained/word2vec-googlenews-300d-top5k.bin"
    assert result["config"]["keras"]["cell"] == "gru" and result["config"]["keras"]["vectors"] == "word2vec"


def test_rerun_skips_finished_results_and_adds_new_seeds(first_run):
    store, first = first_run
    saved = store / "trec6" / "seed-0" / "keras.json"
    saved_text = saved.read_text()
    status, second, stderr = accuracy(*COMMAND, "--seeds", "0,1", "--resume-dir", store)
    assert status == 0, stderr[-3000:]
    assert "trec6, seed 0: keras already done" in stderr and "the small LM: already trained" in stderr
    assert "seed 0: plain Keras baseline" not in stderr and "seed 1: plain Keras baseline" in stderr
    # The report is assembled from the saved seed and the new one; the saved file is left as it was.
    assert [figures["seed"] for figures in keras_seeds(second)] == [0, 1]
    assert keras_seeds(second)[0] == keras_seeds(first)[0]
    assert saved.read_text() == saved_text
    assert json.loads((store / "trec6" / "seed-1" / "keras.json").read_text())["keras"] == keras_seeds(second)[1]


def test_other_settings_are_refused_not_mixed_in(first_run):
    store, _ = first_run
    files = {path: path.read_bytes() for path in store.rglob("*") if path.is_file()}
    status, result, stderr = accuracy(*COMMAND, "--keras-cell", "lstm", "--resume-dir", store)
    assert status == 2 and result is None
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "keras_cell" in last and "Traceback" not in stderr
    assert {path: path.read_bytes() for path in store.rglob("*") if path.is_file()} == files


def test_bidirectional_row_reports_the_ensemble_and_each_member():
    # --smoke's small LM gets a tiny backward partner; both go through `pretrain --bidirectional`.
    status, result, stderr = accuracy("--smoke", "--tasks", "trec6", "--rows", "bidirectional", "--seeds", "0")
    assert status == 0, stderr[-3000:]
    rows = result["tasks"]["trec6"]["rows"]
    assert list(rows) == ["bidirectional", "bidirectional_forward", "bidirectional_backward"]
    ensemble = rows["bidirectional"]["seeds"][0]
    pretrain_step, finetune_step = ensemble["steps"]
    assert pretrain_step["step"] == "pretrain --bidirectional"
    assert set(pretrain_step["valid_perplexity"]) == {"forward", "backward"}
    assert set(finetune_step["epochs"]) == {"forward", "backward"}
    for direction in ("forward", "backward"):
        member = rows[f"bidirectional_{direction}"]["seeds"][0]
        assert 0 <= member["test_accuracy"] <= 1 and member["seconds"] == ensemble["seconds"]
    assert "small LM (backward)" in stderr
