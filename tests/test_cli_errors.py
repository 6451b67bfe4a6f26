"""Bad input on the real command line: one `error:` line naming the culprit, exit status 2, nothing written.

Every case must fail before training starts. Commands that import TensorFlow still take a few
seconds to start, so the cases run concurrently, each in its own working directory, and each
test checks the result of its own case.
"""

import csv
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
WORD2VEC = PRETRAINED / "word2vec-googlenews-300d-top5k.bin"
SHIPPED_RECIPES = ["gru-glove", "gru-word2vec", "lstm-glove", "lstm-word2vec", "rnn-glove"]
TFTUNE = [sys.executable, "-m", "tftune.cli"]
# A case that starts training by mistake fails on this instead of stalling the suite.
TIMEOUT_SECONDS = 120


def cli_environment():
    """The environment of a user's shell: the CLI itself must keep TensorFlow's start-up notices quiet."""
    env = {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TFTUNE_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_tftune(args, cwd=None):
    return subprocess.run(
        [*TFTUNE, *args], cwd=cwd, env=cli_environment(), capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )


def real_reviews_csv(n_rows, header=("text", "label")):
    """The first rows of the shipped validation reviews (both classes), under `header`."""
    with open(PRETRAINED / "movie-reviews" / "valid.csv", encoding="utf-8", newline="") as f:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(f)]
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows[: n_rows // 2] + rows[-(n_rows // 2) :])
    return out.getvalue()


NOT_A_RUN = {"not-a-run/notes.txt": "results of an older experiment\n"}


@dataclass
class Case:
    """A command line that must fail, the files it starts with, and what its message must name."""

    args: list
    names: list
    files: dict = field(default_factory=dict)


CASES = {
    "unknown recipe": Case(
        ["pretrain", "--recipe", "no-such-recipe", "--out", "out"], ["'no-such-recipe'", "lstm-glove"]
    ),
    "unknown --set key": Case(["pretrain", "--set", "encoder.widht=128", "--out", "out"], ["encoder.widht", "units"]),
    "mistyped --set value": Case(
        ["pretrain", "--set", "encoder.units=many", "--out", "out"], ["encoder.units", "many"]
    ),
    "malformed --set": Case(
        ["pretrain", "--set", "encoder.units", "--out", "out"], ["encoder.units", "section.key=value"]
    ),
    "--corpus missing": Case(["pretrain", "--corpus", "missing.txt", "--out", "out"], ["missing.txt", "no such file"]),
    "--corpus empty": Case(
        ["pretrain", "--corpus", "empty.txt", "--out", "out"], ["empty.txt", "empty"], {"empty.txt": ""}
    ),
    "--corpus binary": Case(
        ["pretrain", "--corpus", "corpus.txt", "--out", "out"],
        ["corpus.txt", "binary"],
        {"corpus.txt": WORD2VEC.open("rb").read(65536)},
    ),
    "--embeddings missing": Case(
        ["pretrain", "--embeddings", "missing.vec", "--out", "out"], ["missing.vec", "does not exist"]
    ),
    "--embeddings word2vec binary read as glove": Case(
        ["pretrain", "--embeddings", str(WORD2VEC), "--embeddings-format", "glove", "--out", "out"],
        [WORD2VEC.name, "'word2vec-binary'"],
    ),
    "--out not empty": Case(["pretrain", "--out", "out"], ["out: exists", "--force"], {"out/notes.txt": "keep me\n"}),
    "finetune --from not a run": Case(
        ["finetune", "--from", "not-a-run", "--out", "out"], ["not-a-run", "run.json"], NOT_A_RUN
    ),
    "finetune --from not a run, with --recipe": Case(
        ["finetune", "--from", "not-a-run", "--recipe", "gru-glove", "--out", "out"],
        ["not-a-run", "run.json"],
        NOT_A_RUN,
    ),
    "finetune --from missing": Case(["finetune", "--from", "missing-run", "--out", "out"], ["missing-run", "no such"]),
    "predict not an export": Case(
        ["predict", "not-a-run", "a gripping , moving film ."], ["not-a-run", "export"], NOT_A_RUN
    ),
    "evaluate not an export": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["not-a-run", "export"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6)},
    ),
    "evaluate --data without label column": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", "label column 'label'", "sentiment"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6, header=("text", "sentiment"))},
    ),
    "embeddings inspect missing": Case(["embeddings", "inspect", "missing.vec"], ["missing.vec", "does not exist"]),
    "recipes show unknown": Case(["recipes", "show", "no-such-recipe"], ["'no-such-recipe'"]),
}


def write_files(root, files):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def snapshot(root):
    """Every file and directory under `root` (hidden ones too), with file contents."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    """Starts every case at once; maps a case name to (future result, working dir, files before)."""
    root = tmp_path_factory.mktemp("cli-errors")
    started = {}
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        for number, (name, case) in enumerate(CASES.items()):
            cwd = root / f"case-{number}"
            cwd.mkdir()
            write_files(cwd, case.files)
            started[name] = (pool.submit(run_tftune, case.args, cwd), cwd, snapshot(cwd))
        yield started


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(failures, name):
    future, cwd, before = failures[name]
    result = future.result()  # a case that starts training times out here
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for culprit in CASES[name].names:
        assert culprit in lines[0]
    assert result.stdout == ""
    assert snapshot(cwd) == before  # no --out directory, no staging leftovers, inputs untouched


COMMANDS = [
    [],
    ["pretrain"],
    ["finetune"],
    ["export"],
    ["evaluate"],
    ["predict"],
    ["embeddings"],
    ["embeddings", "inspect"],
    ["recipes"],
    ["recipes", "list"],
    ["recipes", "show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "tftune")
def test_help(command):
    result = run_tftune([*command, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ") and result.stderr == ""
    assert run_tftune([*command, "-h"]).stdout == result.stdout


def test_help_lists_every_command():
    usage = run_tftune(["--help"]).stdout
    for command in ("pretrain", "finetune", "export", "evaluate", "predict", "embeddings", "recipes"):
        assert f"  {command} " in usage


def test_recipes_list_shows_the_shipped_recipes():
    result = run_tftune(["recipes", "list"])
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        f"{name} (default)" if name == "lstm-glove" else name for name in SHIPPED_RECIPES
    ]
    assert sorted(path.stem for path in (REPO / "recipes").glob("*.toml")) == SHIPPED_RECIPES
    assert all(line.split("\t")[1].strip() for line in lines)  # every recipe has a description
