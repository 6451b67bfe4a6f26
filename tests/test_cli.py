"""End to end through the real command line: pretrain -> finetune -> export -> reload -> predict."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import preloaded_python
from conftest import GLOVE, WORD2VEC, data_flags, tiny_overrides

pytestmark = pytest.mark.slow
TFTUNE = [sys.executable, "-m", "tftune.cli"]


def run_tftune(*args):
    result = preloaded_python.run([*TFTUNE, *map(str, args)], capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return result


def tftune(*args):
    return run_tftune(*args).stdout


def settings(cell):
    return [arg for override in tiny_overrides(cell=cell, units=12) for arg in ("--set", override)]


@pytest.mark.parametrize(
    "cell, vectors, fmt",
    [
        ("simple_rnn", GLOVE, "glove"),
        ("lstm", WORD2VEC, "word2vec-binary"),
        ("gru", GLOVE, "glove"),
    ],
)
def test_pretrain_finetune_export_predict(tmp_path, small_data, cell, vectors, fmt):
    pretrain_dir, finetune_dir = tmp_path / "pretrain", tmp_path / "finetune"
    result = run_tftune(
        "pretrain", "--recipe", "gru-glove", "--embeddings", vectors, "--embeddings-format", fmt,
        "--out", pretrain_dir, *data_flags(small_data, "pretrain"), *settings(cell),
    )
    assert result.stdout.strip().splitlines()[-1] == str(pretrain_dir)
    # The library's log records reach stderr once each, as `tftune: ...` lines.
    assert result.stderr.splitlines().count(f"tftune: pretrain run written to {pretrain_dir}") == 1, result.stderr
    # max_len above the texts' 81-110 tokens: batches of several lengths, as a real task has.
    result = run_tftune("finetune", "--from", pretrain_dir, "--out", finetune_dir, *data_flags(small_data, "finetune"),
                        "--set", "finetune.epochs=3",
                        "--set", "finetune.max_len=120")
    assert result.stdout.strip().splitlines()[-1] == str(finetune_dir / "export")
    # A quiet log: the plan before training, each stage, the run's ETA; no TensorFlow warning.
    log = result.stderr.splitlines()
    assert not [line for line in log if "retracing" in line or not line.startswith("tftune: ")], result.stderr
    assert "tftune: classifier plan: 3 stages x 1 epoch = 3 epochs (gradual unfreezing: the head first, " \
           "then one more recurrent layer per stage)" in log
    assert "tftune: classifier stage 1/3, epoch 1 of 3: training the head only" in log
    assert [line for line in log if "of the run, ETA" in line][-1] == "tftune: epoch 3/3 of the run, ETA 00:00"
    headers = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert headers == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]  # Keras prints none for a one-epoch fit

    recipe = (finetune_dir / "recipe.toml").read_text()
    assert f'cell = "{cell}"' in recipe and f'format = "{fmt}"' in recipe
    texts = ["a wonderful , moving film .", "the worst movie of the year ."]
    lines = tftune("predict", finetune_dir / "export", *texts).strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        label, probability = line.split("\t")
        assert label in {"negative", "positive"} and 0.5 <= float(probability) <= 1.0

    metrics = json.loads(tftune("evaluate", finetune_dir, "--data", small_data["test"]))
    recorded = json.loads((finetune_dir / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"])
    assert metrics["examples"] == 60


def test_embeddings_inspect_reports_size_dim_and_coverage(small_data):
    report = json.loads(tftune("embeddings", "inspect", WORD2VEC, "--format", "word2vec-binary", "--corpus", small_data["corpus"]))
    assert (report["size"], report["dim"]) == (5000, 300)
    assert 0.3 < report["coverage"]["token_share"] <= 1


def test_recipes_show_applies_overrides():
    toml = tftune("recipes", "show", "lstm-glove", "--set", "encoder.units=64")
    assert "units = 64" in toml and 'cell = "lstm"' in toml


def test_export_command_rewrites_an_identical_model(tiny_runs, tmp_path):
    out = tmp_path / "again"
    assert tftune("export", tiny_runs["finetune"], "--out", out).strip() == str(out)
    texts = ["a wonderful , moving film .", "dull and far too long"]
    assert tftune("predict", out, *texts) == tftune("predict", tiny_runs["finetune"], *texts)


def test_evaluate_plot_draws_the_confusion_matrix(tiny_runs, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    data = tiny_runs["data"]["test"]
    plot = tmp_path / "confusion.png"
    result = run_tftune("evaluate", tiny_runs["finetune"], "--data", data, "--plot", plot)
    metrics = json.loads(result.stdout)  # stdout stays one JSON object; the file written is logged
    assert metrics["examples"] == 60 and metrics["labels"] == list(metrics["per_class"])
    assert f"tftune: plot written to {plot}" in result.stderr.splitlines()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and stat.S_IMODE(plot.stat().st_mode) == 0o644
    height, width, _ = image.imread(plot).shape
    assert width > height >= 300  # the matrix beside the per-class scores
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary file left

    before = plot.read_bytes()
    refused = preloaded_python.run([*TFTUNE, "evaluate", str(tiny_runs["finetune"]), "--data", str(data), "--plot", str(plot)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--force" in refused.stderr and plot.read_bytes() == before
    tftune("evaluate", tiny_runs["finetune"], "--data", data, "--plot", plot, "--force")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_reads_standard_input(tiny_runs):
    result = preloaded_python.run(
        [*TFTUNE, "predict", str(tiny_runs["finetune"])], input="great fun\nawful\n", capture_output=True, text=True
    )
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2


# --- Streams and encodings ---


def test_predict_into_a_closed_pipe_stops_quietly(tiny_runs):
    """`tftune predict RUN < texts | head -1`: once the reader is gone, no traceback and no error line."""
    texts = "".join(f"review number {number} was fine\n" for number in range(20000)).encode()
    process = preloaded_python.Popen([*TFTUNE, "predict", str(tiny_runs["finetune"])], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(texts)
    process.stdin.close()
    first = process.stdout.readline()
    process.stdout.close()  # like `head -1`: more than a pipe's buffer is still to come
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr  # what a shell reports for SIGPIPE
    assert first.decode().count("\t") == 1
    assert stderr == ""


def test_predict_with_standard_input_closed_says_so(tiny_runs):
    result = subprocess.run(["sh", "-c", 'exec 0<&-; exec "$@"', "sh", *TFTUNE, "predict", str(tiny_runs["finetune"])],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "error: standard input is closed; give the texts as arguments, or pipe them in one per line\n"


def test_predict_argument_that_is_not_utf8_is_read_in_encoding(tiny_runs):
    latin1 = "un café très réussi".encode("latin-1")
    refused = preloaded_python.run([*TFTUNE, "predict", str(tiny_runs["finetune"]), "fine", latin1], capture_output=True)
    assert refused.returncode == 2
    assert refused.stderr.decode() == (
        "error: TEXT argument 2: not valid utf-8 at byte 6 (line 1, column 7); if it is latin-1 text, "
        "pass --encoding latin-1\n"
    )
    accepted = preloaded_python.run([*TFTUNE, "predict", str(tiny_runs["finetune"]), "--encoding", "latin-1", "fine", latin1],
                              capture_output=True)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.decode() == tftune("predict", tiny_runs["finetune"], "fine", "un café très réussi")
