"""Smoke runs of the benchmark suite (`python -m bench.NAME --smoke`): every result has its keys.

The seven smoke runs start together and run side by side, to keep the whole file near a
minute; timings are never asserted.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import preloaded_python

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("lm_throughput", "rnn_stack", "finetune_throughput", "scaling", "vectors", "serving", "accuracy")
RUN_KEYS = {"tokens_per_second", "valid_perplexity", "steps", "epochs", "train_seconds", "vocab_size",
            "train_tokens", "valid_tokens", "peak_rss_mb"}
LOAD_KEYS = {"vectors", "dim", "import_rss_mb", "load_seconds", "rss_after_load_mb", "align_seconds",
             "peak_rss_mb", "added_peak_mb", "ratios"}
SERVING_KEYS = {"docs_per_second", "latency_ms"}
PIPELINE_KEYS = {"examples_per_second", "real_token_share", "mean_batch_length", "epoch_seconds"}
ACCURACY_ROW_KEYS = {"description", "seeds", "mean", "std"}
ACCURACY_SEED_KEYS = {"seed", "test_accuracy", "test_macro_f1", "valid_accuracy", "seconds"}
ACCURACY_STEP_KEYS = {"step", "recipe", "overrides", "from_run", "out", "seconds"}

pytestmark = pytest.mark.slow
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def smoke_outputs():
    """{benchmark: (exit status, stdout, stderr)} of all the smoke runs, started together."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = {
        name: preloaded_python.Popen(
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
    assert result["tensorflow_matmul_peak_gflop_per_second"] > 0 and "GFLOP/s" in smoke_outputs["lm_throughput"][1]
    if TORCH_INSTALLED:  # PyTorch's LM trained on the same windows of the same vocabulary
        assert {"tokens_per_second", "valid_perplexity", "steps"} <= set(cell["pytorch"])
        assert cell["pytorch"]["tokens_per_second"] > 0 and cell["ratios_vs_pytorch"]["tokens_per_second"] > 0
        assert result["config"]["pytorch_threads"] >= 1
    else:
        assert cell["pytorch"] == "not installed"


def test_rnn_stack(smoke_outputs):
    result = result_of(smoke_outputs, "rnn_stack")
    assert result["matmul_peak_gflop_per_second"] > 0
    # The practical peak is the better of TensorFlow's and numpy's, so neither share can exceed its own.
    assert result["matmul_peak_gflop_per_second"] == max(result["tensorflow_matmul_peak_gflop_per_second"],
                                                         result["numpy_matmul_peak_gflop_per_second"])
    assert set(result["cells"]) == {"lstm", "gru", "simple_rnn"}
    for cell in result["cells"].values():
        assert cell["fast"]["fast_path"] is True and cell["keras"]["fast_path"] is False
        assert 0 < cell["fast"]["share_of_matmul_peak"] and cell["flop_per_token"] > 0
        assert cell["fast"]["share_of_matmul_peak"] <= cell["fast"]["share_of_tensorflow_matmul_peak"]
        # The ceilings: the same matmuls alone, in XLA's and in BLAS' kernels.
        for ceiling in ("matmuls_xla", "matmuls_blas"):
            assert 0 < cell[ceiling]["share_of_matmul_peak"] and cell[ceiling]["fast_path"] is False
        if TORCH_INSTALLED:
            assert cell["pytorch"]["tokens_per_second"] > 0 and cell["ratios"]["fast_vs_pytorch_tokens_per_second"] > 0
        else:
            assert cell["pytorch"] == "not installed"
    assert isinstance(result["machine"]["cpu_flags"], list)


# Run as a user without PyTorch runs them: the import system finds no `torch`.
WITHOUT_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NoTorch())
sys.argv[0] = "{0}"
runpy.run_module("{0}", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(not TORCH_INSTALLED, reason="the smoke runs above already run without PyTorch")
def test_pytorch_columns_say_not_installed_without_it():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    commands = {"rnn_stack": ["--cells", "lstm"], "lm_throughput": []}
    processes = {
        name: preloaded_python.Popen([sys.executable, "-c", WITHOUT_TORCH.format(f"bench.{name}"), "--smoke", *options],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, options in commands.items()
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        result = result_of({name: (process.returncode, stdout, stderr)}, name)
        assert result["machine"]["torch"] is None
        for cell in result["cells"].values():
            assert cell["pytorch"] == "not installed"
        assert "not installed" in stdout.splitlines()[1]


def test_finetune_throughput(smoke_outputs):
    result = result_of(smoke_outputs, "finetune_throughput")
    assert set(result["tasks"]) == {"sst2", "trec6", "authors"}
    for name, task in result["tasks"].items():
        if "skipped" in task:
            assert name != "authors"  # shipped, never skipped
            continue
        for pipeline in ("bucketed", "padded", "raw_strings"):
            assert PIPELINE_KEYS <= set(task[pipeline])
        assert task["padded"]["real_token_share"] <= task["bucketed"]["real_token_share"]
        # fit on raw strings makes as many batches of the same texts
        assert task["raw_strings"]["batches"] == task["bucketed"]["batches"]
        assert set(task["ratios"]) == {"examples_per_second", "real_token_share", "raw_strings_examples_per_second"}


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
    assert {"general", "recipe", "overrides", "seeds", "tasks", "rows"} <= set(result["config"])
    assert set(result["tasks"]) == {"trec6", "sst2"}
    if all("skipped" in task for task in result["tasks"].values()):
        return  # no ../shared/data beside the checkout
    seeds = result["config"]["seeds"]
    # --smoke: a tiny LM of the shipped recipe is both the general LM and the small LM.
    general = result["small_lm"]["out"]
    assert result["general"]["run"] == general == "$TMP/small-lm"
    assert result["small_lm"]["recipe"] == "shipped recipe lstm-glove"
    # --smoke: every row on TREC-6 (one low-data point); the baselines and the headline row on SST-2.
    expected = {"trec6": {"keras", "reference", "tftune", "small_lm", "scratch", "no_awd", "closed_vocab", "all_layers",
                          "no_lm_finetune", "low_data_25pct_tftune", "low_data_25pct_scratch"},
                "sst2": {"keras", "reference", "tftune"}}
    for name, task in result["tasks"].items():
        assert set(task["rows"]) == expected[name]
        for label, row in task["rows"].items():
            if "skipped" in row:
                assert label == "all_layers"  # when the recipe already trains every layer
                continue
            assert ACCURACY_ROW_KEYS <= set(row)
            if label == "reference":
                continue
            assert [figures["seed"] for figures in row["seeds"]] == seeds
            for figures in row["seeds"]:
                assert ACCURACY_SEED_KEYS <= set(figures) and 0 <= figures["test_accuracy"] <= 1
                for step in figures.get("steps", []):
                    assert ACCURACY_STEP_KEYS <= set(step)
            accuracies = [figures["test_accuracy"] for figures in row["seeds"]]
            assert row["mean"]["test_accuracy"] == pytest.approx(sum(accuracies) / len(accuracies), abs=1e-4)
            assert set(row["std"]) == {"test_accuracy", "valid_accuracy", "test_macro_f1"}
    rows = result["tasks"]["trec6"]["rows"]
    # By default the Keras baseline is an LSTM on GloVe, the cell and vectors of the general LM.
    assert "frozen GloVe 50d, LSTM(16)" in rows["keras"]["description"]
    assert rows["keras"]["seeds"][0]["settings"]["cell"] == "lstm" and "reference_accuracy" in rows["keras"]["seeds"][0]

    def steps(label):
        return rows[label]["seeds"][0]["steps"]

    # tftune: pretrain --from GENERAL --corpus train.csv with its recipe, then finetune --from the LM run.
    lm, classifier = steps("tftune")
    assert lm["step"] == "pretrain" and lm["from_run"] == general and lm["recipe"].startswith("preset recipe")
    assert "distribute.strategy=none" in lm["overrides"]
    assert lm["data"] == {"corpus": [f"$TMP/trec6/seed-{seeds[0]}/train.csv"]}
    assert classifier["step"] == "finetune" and classifier["from_run"] == lm["out"]
    assert classifier["recipe"] == f"LM run recipe {lm['out']}"
    assert classifier["data"]["test"] == f"$TMP/trec6/seed-{seeds[0]}/test.csv"
    small, small_target, _ = steps("small_lm")
    assert small == result["small_lm"] and small_target["from_run"] == small["out"]
    scratch, _ = steps("scratch")
    assert scratch["from_run"] is None and "pretrain.epochs=0" in scratch["overrides"]
    for label, override in (("no_awd", "encoder.weight_dropout=0"), ("closed_vocab", "vocab.open=false")):
        own_lm, own_classifier = steps(label)
        assert own_lm["from_run"] == general and own_lm["out"] != lm["out"]
        assert override in own_lm["overrides"] and override in own_classifier["overrides"]
    (straight,) = steps("no_lm_finetune")
    assert straight["from_run"] == general and straight["recipe"].startswith("preset recipe")
    if "skipped" not in rows["all_layers"]:
        assert steps("all_layers")[0] == lm and "finetune.unfreeze=all" in steps("all_layers")[1]["overrides"]
    low_data = rows["low_data_25pct_tftune"]["seeds"][0]
    assert low_data["train_examples"] < result["tasks"]["trec6"]["examples"]["train"]
    assert low_data["steps"][0] == lm and steps("low_data_25pct_scratch")[0] == scratch


def test_accuracy_mean_and_std_over_seeds():
    from bench import accuracy

    figures = [{"seed": 0, "test_accuracy": 0.9, "valid_accuracy": 0.8, "test_macro_f1": 0.85, "seconds": 10.0},
               {"seed": 1, "test_accuracy": 0.8, "valid_accuracy": 0.7, "test_macro_f1": 0.75, "seconds": 20.0}]
    spread = accuracy.spread(figures)
    assert spread["mean"] == {"test_accuracy": 0.85, "valid_accuracy": 0.75, "test_macro_f1": 0.8, "seconds": 15.0}
    assert spread["std"] == {"test_accuracy": 0.0707, "valid_accuracy": 0.0707, "test_macro_f1": 0.0707}
    assert set(accuracy.spread(figures[:1])["std"].values()) == {None}  # one seed: no spread
    result = {"config": {"seeds": [0, 1], "overrides": [], "general": "lstm-glove-general"}, "general": None,
              "small_lm": None, "tasks": {"trec6": {"rows": {"tftune": {"description": "d", "seeds": figures,
                                                                       **spread}}}}}
    assert "| trec6 | tftune | 85.0% ± 7.1% | 75.0% ± 7.1% | 0.800 | 0, 1 | 15 | d |" in accuracy.markdown(result)


def test_scaling(smoke_outputs):
    result = result_of(smoke_outputs, "scaling")
    rows = result["vocabulary"]["rows"]
    assert len(rows) == 2
    for row in rows.values():
        for side in ("tftune", "tftune_tied"):  # the sampled and the tied_sampled head
            assert {"tokens_per_second", "tokens_per_cpu_second", "peak_rss_mb", "embedding_mb"} <= set(row[side])
            assert row[side]["tokens_per_second"] > 0 and row["ratios"][f"{side}_vs_keras"] > 0
        assert row["keras"]["tokens_per_second"] > 0
        assert row["tied_head_and_moments_mb"] < row["head_and_moments_mb"]
    smallest, largest = (rows[size] for size in sorted(rows, key=int))
    assert smallest["ratios"]["tftune_vs_smallest_vocabulary"] == 1
    assert smallest["ratios"]["tftune_tied_vs_smallest_vocabulary"] == 1
    assert largest["tftune"]["embedding_mb"] > smallest["tftune"]["embedding_mb"]
    length = result["length"]
    if "skipped" not in length:  # the IMDb subset is in ../shared/data
        for row in length["rows"].values():
            assert PIPELINE_KEYS <= set(row["bucketed"]) and PIPELINE_KEYS <= set(row["padded"])
            assert row["bucketed"]["seconds_per_1k_real_tokens"] > 0


def test_markdown_table_from_results(smoke_outputs, tmp_path):
    for name in BENCHMARKS:
        (tmp_path / f"{name}.json").write_text(smoke_outputs[name][1].splitlines()[0])
    completed = preloaded_python.run(
        [sys.executable, "-m", "bench", "--markdown", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    table = completed.stdout
    assert "TensorFlow" in table and "Keras" in table
    for heading in (f"bench.{name}" for name in BENCHMARKS):
        assert heading in table
    assert table.count("| --- |") >= len(BENCHMARKS)  # at least one table each
