"""`tftune interpret` and `tftune.interpret`: what a trained classifier gets wrong, and how it trained."""

import csv
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import preloaded_python
from conftest import snapshot
from tftune.interpretation import interpretation, most_confused

TFTUNE = [sys.executable, "-m", "tftune.cli"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_tftune(*args, env=None, cold=False):
    """Runs the CLI; `cold`: in a process that has imported nothing yet (for tests of what it imports)."""
    start = subprocess.run if cold else preloaded_python.run
    return start([*TFTUNE, *map(str, args)], capture_output=True, text=True, env=env)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def assert_input_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# === The report, from known probabilities ===


def test_report_of_known_probabilities():
    labels = ["neg", "neu", "pos"]
    texts = ["a", "b", "c", "d", "e"]
    true = [0, 0, 1, 2, 2]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7], [0.1, 0.5, 0.4]])
    report = interpretation(texts, true, probabilities, labels, top=3)
    assert report["labels"] == labels and report["accuracy"] == pytest.approx(3 / 5)
    # -log p(true): b 2.30 (neg predicted pos), e 0.92 (pos predicted neu), c 0.51, d 0.36, a 0.36.
    assert [(row["text"], row["label"], row["predicted"]) for row in report["top_losses"]] == [
        ("b", "neg", "pos"), ("e", "pos", "neu"), ("c", "neu", "neu")]
    assert report["top_losses"][0]["loss"] == pytest.approx(-np.log(0.1))
    assert report["top_losses"][0]["probability"] == pytest.approx(0.8)
    assert report["most_confused"] == [{"true": "neg", "predicted": "pos", "count": 1},
                                       {"true": "pos", "predicted": "neu", "count": 1}]


def test_most_confused_orders_by_count_and_skips_the_diagonal():
    confusion = [[5, 1, 3], [0, 4, 0], [2, 3, 9]]
    pairs = most_confused(confusion, ["a", "b", "c"], min_count=2)
    assert [(pair["true"], pair["predicted"], pair["count"]) for pair in pairs] == [
        ("a", "c", 3), ("c", "b", 3), ("c", "a", 2)]


# === On a trained run, as a user runs it ===


@pytest.fixture(scope="module")
def interpreted(tiny_runs, tmp_path_factory):
    """`tftune interpret` run once on the tiny finetune run: the result, --out, and the run before."""
    out = tmp_path_factory.mktemp("interpret") / "report"
    before = snapshot(tiny_runs["finetune"])
    result = run_tftune("interpret", tiny_runs["finetune"], "--test", tiny_runs["data"]["test"], "--top", 5,
                        "--out", out)
    return {"result": result, "out": out, "before": before}


@pytest.mark.slow
def test_interpret_prints_the_files_it_writes(interpreted, tiny_runs):
    result, out = interpreted["result"], interpreted["out"]
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == [str(out / "report.json"), str(out / "top_losses.csv"),
                                          str(out / "curves.png")]
    assert sorted(path.name for path in out.iterdir()) == ["curves.png", "report.json", "top_losses.csv"]
    assert mode(out) == 0o755 and all(mode(path) == 0o644 for path in out.iterdir())
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not [path for path in out.parent.iterdir() if path.name != "report"]  # no staging folder left
    assert snapshot(tiny_runs["finetune"]) == interpreted["before"]  # the run is only read


@pytest.mark.slow
def test_interpret_report_is_consistent(interpreted, tiny_runs):
    out = interpreted["out"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    labels = json.loads((tiny_runs["finetune"] / "labels.json").read_text())
    assert report["labels"] == labels and list(report["per_class"]) == labels
    assert report["examples"] == 60 and len(report["confusion_matrix"]) == len(labels)
    recorded = json.loads((tiny_runs["finetune"] / "metrics.json").read_text())["test"]
    assert report["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-6)

    losses = [row["loss"] for row in report["top_losses"]]
    assert len(losses) == 5 and losses == sorted(losses, reverse=True) and losses[-1] > 0
    for row in report["top_losses"]:
        assert row["label"] in labels and row["predicted"] in labels and 1 / len(labels) <= row["probability"] <= 1
    errors = round(report["examples"] * (1 - report["accuracy"]))
    assert sum(pair["count"] for pair in report["most_confused"]) == errors  # every wrong prediction, once
    assert all(pair["true"] != pair["predicted"] for pair in report["most_confused"])

    with open(out / "top_losses.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["text"] for row in rows] == [row["text"] for row in report["top_losses"]]
    history = json.loads((tiny_runs["finetune"] / "history.json").read_text())
    assert [stage["stage"] for stage in report["stages"]] == sorted({record["stage"] for record in history})


@pytest.mark.slow
def test_interpret_refuses_bad_input_in_one_line(interpreted, tiny_runs, tmp_path):
    run, test, out = tiny_runs["finetune"], tiny_runs["data"]["test"], interpreted["out"]
    before = snapshot(out)
    assert_input_error(run_tftune("interpret", run, "--test", test, "--out", out), "--force")
    assert_input_error(run_tftune("interpret", run, "--test", test, "--out", run / "report"), "finetune run")
    assert_input_error(run_tftune("interpret", tmp_path / "missing", "--test", test, "--out", tmp_path / "r"),
                       "no such run")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\ngood film,positive\nodd film,sideways\n", encoding="utf-8")
    assert_input_error(run_tftune("interpret", run, "--test", unknown, "--out", tmp_path / "r"), "'sideways'")
    assert_input_error(run_tftune("interpret", run, "--test", test, "--label-column", "stars",
                                  "--out", tmp_path / "r"), "stars")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine\n")
    assert_input_error(run_tftune("interpret", run, "--test", test, "--out", notes, "--force"), "not a tftune interpret report")
    assert snapshot(out) == before and not (tmp_path / "r").exists() and (notes / "todo.txt").read_text() == "mine\n"


@pytest.mark.slow
def test_interpret_without_matplotlib(interpreted, tiny_runs, tmp_path):
    """Without matplotlib the curves are skipped with one log line, or refused when --plot asks for them."""
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    run, test = tiny_runs["finetune"], tiny_runs["data"]["test"]
    assert_input_error(run_tftune("interpret", run, "--test", test, "--out", tmp_path / "a", "--plot", env=env, cold=True),
                       "matplotlib")
    # --force replaces the earlier report whole (same command otherwise): the old curves.png goes too.
    result = run_tftune("interpret", run, "--test", test, "--top", 5, "--out", interpreted["out"], "--force", env=env,
                        cold=True)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "curves" in line] == [
        "tftune: training curves not drawn: curves.png needs matplotlib, which is not installed: "
        "pip install 'tftune[plot]'"]
    assert sorted(path.name for path in interpreted["out"].iterdir()) == ["report.json", "top_losses.csv"]
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.slow
def test_python_twin_matches_the_command(interpreted, tiny_runs, tmp_path):
    import tftune

    from tftune.data import read_labeled

    texts, labels = read_labeled(tiny_runs["data"]["test"])
    report = tftune.interpret(tiny_runs["finetune"], (texts, labels), top=5)
    assert report["files"] == [] and report["data"] is None
    expected = json.loads((interpreted["out"] / "report.json").read_text(encoding="utf-8"))
    assert report["confusion_matrix"] == expected["confusion_matrix"]
    assert [row["text"] for row in report["top_losses"]] == [row["text"] for row in expected["top_losses"]]
    assert [row["loss"] for row in report["top_losses"]] == pytest.approx(
        [row["loss"] for row in expected["top_losses"]], rel=1e-4)

    written = tftune.interpret(tiny_runs["finetune"], tiny_runs["data"]["test"], out=tmp_path / "report", plot=False)
    assert written["files"] == [str(tmp_path / "report" / "report.json"), str(tmp_path / "report" / "top_losses.csv")]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["labels"] == report["labels"]
