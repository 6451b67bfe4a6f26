"""The exported SavedModel: raw strings in, probabilities and labels out, in a fresh process."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import preloaded_python
from conftest import tiny_corpus, tiny_labeled, tiny_overrides

from tftune.data import read_labeled
from tftune.export import Predictor, find_export

pytestmark = pytest.mark.slow

FRESH_PROCESS = """
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
texts = json.loads(sys.stdin.read())
out = serve(text=tf.constant(texts))
assert "tftune" not in sys.modules
print(json.dumps({
    "probabilities": out["probabilities"].numpy().tolist(),
    "label": [x.decode() for x in out["label"].numpy()],
    "dtype": out["probabilities"].dtype.name,
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in serve.structured_input_signature[1].items()},
}))
"""


def in_process_probabilities(run, texts):
    """Probabilities of the trained classifier, computed by the Keras model in this process."""
    import keras

    from tftune.models import TextClassifier
    from tftune.recipe import Recipe
    from tftune.text import Tokenizer, Vocabulary

    recipe = Recipe.from_toml_file(run / "recipe.toml")
    info = json.loads((run / "run.json").read_text())
    # The finetune run's vocabulary: the pretrain run's, grown by the task's words (open vocabulary).
    vocab = Vocabulary.load(run / "assets" / "tokenizer" / "vocabulary.txt")
    labels = json.loads((run / "labels.json").read_text())
    settings = recipe.finetune
    classifier = TextClassifier.from_preset(run, num_classes=len(labels))  # the run's files alone
    ids = vocab.encode(texts, Tokenizer.from_config(info["tokenizer"]))
    rows = []
    for doc in ids:
        logits = classifier(np.asarray([doc[: settings.max_len]]), training=False)
        rows.append(keras.ops.convert_to_numpy(keras.ops.softmax(logits))[0])
    return np.stack(rows)


def test_fresh_process_matches_in_process_model_on_the_whole_test_set(tiny_runs):
    run = tiny_runs["finetune"]
    texts, _ = read_labeled(tiny_runs["data"]["test"])
    result = preloaded_python.run(
        [sys.executable, "-c", FRESH_PROCESS, str(run / "export")],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
    )
    served = json.loads(result.stdout)
    assert served["inputs"] == {"text": ["string", [None]]}
    assert served["dtype"] == "float32"
    expected = in_process_probabilities(run, texts)
    np.testing.assert_allclose(np.array(served["probabilities"]), expected, atol=1e-5)
    labels = json.loads((run / "labels.json").read_text())
    assert served["label"] == [labels[i] for i in expected.argmax(axis=1)]


def test_saved_model_cli_runs_the_signature(tiny_runs):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    result = subprocess.run(
        [
            str(cli), "run", "--dir", str(tiny_runs["finetune"] / "export"), "--tag_set", "serve",
            "--signature_def", "serving_default", "--input_exprs", 'text=["a wonderful film", "dull"]',
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "probabilities" in result.stdout and "label" in result.stdout


def test_export_has_no_gpu_only_ops_and_float32_outputs(tiny_runs):
    import tensorflow as tf

    path = tiny_runs["finetune"] / "export"
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    assert {name: spec.dtype for name, spec in signature.structured_outputs.items()} == {
        "probabilities": tf.float32,
        "label": tf.string,
    }
    saved_model = (path / "saved_model.pb").read_bytes()
    assert b"Cudnn" not in saved_model



class OptimizerLog(keras.callbacks.Callback):
    """Records the optimizer class, the logged losses and the dtypes of each `fit` call's model."""

    def __init__(self):
        super().__init__()
        self.optimizers, self.losses, self.output_dtypes, self.variable_dtypes = [], [], set(), set()
        self.first_state = self.last_state = None  # the optimizer's variables

    def _optimizer_state(self):
        return [keras.ops.convert_to_numpy(variable) for variable in self.model.optimizer.variables]

    def on_train_begin(self, logs=None):
        self.optimizers.append(type(self.model.optimizer).__name__)
        if self.first_state is None:
            self.first_state = self._optimizer_state()
        # A classifier is a functional model; the subclassed LanguageModel has no symbolic outputs.
        self.output_dtypes.update(str(output.dtype) for output in getattr(self.model, "outputs", None) or [])
        self.variable_dtypes.update(str(variable.dtype) for variable in self.model.variables
                                    if "float" in str(variable.dtype))

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(logs["loss"])
        self.last_state = self._optimizer_state()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_resumes_and_exports_a_float32_cpu_model(small_data, tmp_path, policy):
    from test_checkpoints import CrashAfterEpoch

    import tensorflow as tf

    from tftune.recipe import load_recipe
    from tftune.finetuning import finetune

    # Two layers: gradual unfreezing in 3 stages (set by tiny_overrides), discriminative rates and STLR.
    from tftune.pretraining import pretrain
    recipe = load_recipe("lstm-glove", [*tiny_overrides(cell="lstm"), f"precision.policy={policy}",
                                        "finetune.epochs=4"])
    pretrain_log = OptimizerLog()
    lm_metrics = pretrain(recipe, tmp_path / "lm", tiny_corpus(small_data), callbacks=[pretrain_log])
    assert lm_metrics["precision_policy"] == policy and np.isfinite(lm_metrics["valid"]["perplexity"])

    crash, before_crash = CrashAfterEpoch(2), OptimizerLog()
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(recipe, tmp_path / "lm", tmp_path / "clf", tiny_labeled(small_data), callbacks=[before_crash, crash])
    after_resume = OptimizerLog()
    metrics = finetune(recipe, tmp_path / "lm", tmp_path / "clf", tiny_labeled(small_data), callbacks=[after_resume], resume=True)
    assert metrics["precision_policy"] == policy and metrics["epochs"] == 4

    wrapped = "LossScaleOptimizer" if policy == "mixed_float16" else "DiscriminativeAdam"
    assert set(before_crash.optimizers + after_resume.optimizers) == {wrapped}
    for log in (pretrain_log, before_crash, after_resume):
        assert log.losses and np.all(np.isfinite(log.losses))
        assert log.variable_dtypes == {"float32"}  # mixed policies keep variables in float32
    assert before_crash.output_dtypes == {"float32"}  # logits are float32
    # Resume restores every optimizer variable (Adam's moments, the step counter that drives STLR,
    # and under float16 the loss scale) as the crashed run left it.
    assert len(after_resume.first_state) == len(before_crash.last_state)
    for resumed, saved in zip(after_resume.first_state, before_crash.last_state):
        np.testing.assert_array_equal(resumed, saved)

    # The export is float32 and cuDNN-free whatever policy trained it, and matches a float32
    # in-process model with the trained weights.
    export = tmp_path / "clf" / "export"
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    assert {name: spec.dtype for name, spec in serve.structured_outputs.items()} == {
        "probabilities": tf.float32, "label": tf.string}
    graph = (export / "saved_model.pb").read_bytes()
    assert b"Cudnn" not in graph
    assert not any(f"DT_{half}".encode() in graph for half in ("HALF", "BFLOAT16"))  # no low-precision op left
    texts, _ = read_labeled(small_data["test"])
    keras.mixed_precision.set_global_policy("float32")
    served = serve(text=tf.constant(texts))["probabilities"].numpy()
    np.testing.assert_allclose(served, in_process_probabilities(tmp_path / "clf", texts), atol=1e-5)


@pytest.mark.parametrize(
    "texts",
    [
        [""],
        ["   \t "],
        ["Ünïcödé ʻokina ☃ 東京 , naïve café"],
        ["UNSEEN-WORDS qwertyuiop zxcvbnm"],
        ["good " * 5000],
        ["a fine film"] * 1000,
    ],
    ids=["empty", "whitespace", "non-ascii", "unseen", "very-long", "batch-1000"],
)
def test_serving_handles_awkward_inputs(tiny_runs, texts):
    labels, probabilities = Predictor(tiny_runs["finetune"]).predict(texts)
    assert len(labels) == len(texts)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 10_000])
def test_one_signature_call_serves_a_batch_of_1_or_10000_strings(tiny_runs, batch):
    import tensorflow as tf

    serve = tf.saved_model.load(str(tiny_runs["finetune"] / "export")).signatures["serving_default"]
    texts = [f"A {'fine' if i % 2 else 'dull'} FILM , number {i} ." for i in range(batch)]
    outputs = serve(text=tf.constant(texts))
    assert outputs["probabilities"].shape == (batch, 2) and outputs["label"].shape == (batch,)
    assert np.all(np.isfinite(outputs["probabilities"].numpy()))
    # The recipe lowercases: case does not change the prediction.
    lower = serve(text=tf.constant([text.lower() for text in texts[:2]]))["probabilities"].numpy()
    np.testing.assert_allclose(lower, outputs["probabilities"].numpy()[:2], atol=1e-6)


def test_find_export_accepts_a_run_or_its_export(tiny_runs):
    run = tiny_runs["finetune"]
    assert find_export(run) == run / "export"
    assert find_export(run / "export") == run / "export"
