"""Smoke runs of the benchmark suite (`python -m bench.NAME --smoke`): every result has its keys.

The four smoke runs start together and run side by side, to keep the whole file near a
minute; timings are never asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("lm_throughput", "rnn_stack", "finetune_throughput", "vectors", "serving", "accuracy")
RUN_KEYS = {"tokens_per_second", "valid_perplexity", "steps", "epochs", "train_seconds", "vocab_size",
            "train_tokens", "valid_tokens", "peak_rss_mb"}
LOAD_KEYS = {"vectors", "dim", "import_rss_mb", "load_seconds", "rss_after_load_mb", "align_seconds",
             "peak_rss_mb", "added_peak_mb", "ratios"}
SERVING_KEYS = {"docs_per_second", "latency_ms"}
PIPELINE_KEYS = {"examples_per_second", "real_token_share", "mean_batch_length", "epoch_seconds"}
ACCURACY_ROW_KEYS = {"description", "test_accuracy", "test_macro_f1", "seconds", "seed"}
TFTUNE_ROW_KEYS = ACCURACY_ROW_KEYS | {"valid_accuracy", "epochs", "encoder", "recipe", "overrides"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_outputs():
    """{benchmark: (exit status, stdout, stderr)} of all the smoke runs, started together."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"bench.{name}", "--smoke"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in BENCHMARKS
    }
    outputs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        outputs[name] = (process.returncode, stdout, stderr)
    return outputs


def result_of(smoke_outputs, name):
    status, stdout, stderr = smoke_outputs[name]
    assert status == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert len(lines) == 2, stdout
    result = json.loads(lines[0])
    assert lines[1].startswith(f"{name} ")
    assert result["benchmark"] == name and result["smoke"] is True
    assert {"date", "machine", "wall_seconds"} <= set(result)
    assert {"nproc", "cpu_model", "tensorflow", "keras", "other_processes_cores_mean"} <= set(result["machine"])
    return result


def test_lm_throughput(smoke_outputs):
    result = result_of(smoke_outputs, "lm_throughput")
    assert {"corpus", "seq_len", "batch_size", "units", "budget_seconds", "tftune_lm_output"} <= set(result["config"])
    assert set(result["cells"]) == {"lstm"}
    cell = result["cells"]["lstm"]
    assert RUN_KEYS <= set(cell["tftune"]) and RUN_KEYS <= set(cell["keras"])
    assert cell["same_vocabulary"] is True
    assert set(cell["ratios"]) == {"tokens_per_second", "tokens_per_cpu_second", "valid_perplexity", "peak_rss_mb"}
    assert cell["keras"]["tokens_per_second"] > 0 and cell["tftune"]["tokens_per_second"] > 0


def test_rnn_stack(smoke_outputs):
    result = result_of(smoke_outputs, "rnn_stack")
    assert result["matmul_peak_gflop_per_second"] > 0
    assert set(result["cells"]) == {"lstm", "gru", "simple_rnn"}
    for cell in result["cells"].values():
        assert cell["fast"]["fast_path"] is True and cell["keras"]["fast_path"] is False
        assert 0 < cell["fast"]["share_of_matmul_peak"] and cell["flop_per_token"] > 0


def test_finetune_throughput(smoke_outputs):
    result = result_of(smoke_outputs, "finetune_throughput")
    assert set(result["tasks"]) == {"sst2", "trec6", "authors"}
    for name, task in result["tasks"].items():
        if "skipped" in task:
            assert name != "authors"  # shipped, never skipped
            continue
        for pipeline in ("bucketed", "padded"):
            assert PIPELINE_KEYS <= set(task[pipeline])
        assert task["padded"]["real_token_share"] <= task["bucketed"]["real_token_share"]
        assert set(task["ratios"]) == {"examples_per_second", "real_token_share"}


def test_vectors(smoke_outputs):
    result = result_of(smoke_outputs, "vectors")
    variants = result["shipped"]["variants"]
    assert set(variants) == {"text", "keyedvectors_mmap"}
    for variant in variants.values():
        assert LOAD_KEYS <= set(variant)
        assert variant["vectors"] == 20000 and variant["dim"] == 50
    assert "skipped" in result["full_glove"]


def test_serving(smoke_outputs):
    result = result_of(smoke_outputs, "serving")
    for path in ("savedmodel", "keras", "keras_predict_on_batch", "python_tokenizer"):
        assert SERVING_KEYS <= set(result[path])
        assert {"p50", "p99"} == set(result[path]["latency_ms"])
    assert set(result["ratios"]) == {"docs_per_second", "latency_p50", "latency_p99"}


def test_accuracy(smoke_outputs):
    result = result_of(smoke_outputs, "accuracy")
    assert {"recipe", "overrides", "seed", "tasks", "rows"} <= set(result["config"])
    assert set(result["tasks"]) == {"trec6", "sst2"}
    if all("skipped" in task for task in result["tasks"].values()):
        return  # no ../shared/data beside the checkout
    assert {"corpus", "valid_perplexity", "train_tokens", "seconds", "overrides"} <= set(result["pretraining"])
    # --smoke: every row on TREC-6; the baselines and the shipped recipe on SST-2.
    expected = {"trec6": {"keras", "reference", "tftune", "scratch", "gradual", "constant_lr", "no_lm_finetune"},
                "sst2": {"keras", "reference", "tftune"}}
    for name, task in result["tasks"].items():
        assert set(task["rows"]) == expected[name]
        assert {"valid_perplexity", "seconds", "overrides"} <= set(task["encoders"]["lm_finetuned"])
        for row_name, row in task["rows"].items():
            assert ACCURACY_ROW_KEYS <= set(row)
            assert 0 <= row["test_accuracy"] <= 1
            if row_name not in ("keras", "reference"):
                assert TFTUNE_ROW_KEYS <= set(row)
    assert "pretrain.epochs=0" in result["tasks"]["trec6"]["encoders"]["scratch"]["overrides"]
    (point,) = result["tasks"]["trec6"]["low_data"]
    assert point["train_examples"] < result["tasks"]["trec6"]["examples"]["train"]
    for arm in ("pretrained", "scratch"):
        assert TFTUNE_ROW_KEYS - {"description"} <= set(point[arm])


def test_markdown_table_from_results(smoke_outputs, tmp_path):
    for name in BENCHMARKS:
        (tmp_path / f"{name}.json").write_text(smoke_outputs[name][1].splitlines()[0])
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--markdown", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    table = completed.stdout
    assert "TensorFlow" in table and "Keras" in table
    for heading in (f"bench.{name}" for name in BENCHMARKS):
        assert heading in table
    assert table.count("| --- |") >= len(BENCHMARKS)  # at least one table each
