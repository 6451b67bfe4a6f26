"""A trained model is a Keras model a user can carry: loaded in a new process, it takes text.

Each check runs where a user would run it: a fresh Python process that imports `keras` and
`tftune` and nothing else, so a custom object that is not registered on import fails here.
"""

import json
import os
import sys

import numpy as np
import pytest

import preloaded_python

TEXTS = [
    "A gripping, moving film with a fine cast.",
    "Dull .",
    "The worst movie I have seen this year; the plot makes no sense and the acting is wooden.",
    "",
]

# Loads a run with `tftune.load`, predicts on raw strings and saves the model as a `.keras` file.
LOAD_RUN = """
import json, sys
import numpy as np
import tftune
model = tftune.load(sys.argv[1])
outputs = model.predict(json.loads(sys.argv[3]), verbose=0)
model.save(sys.argv[2])
print(json.dumps({"class": type(model).__name__, "outputs": np.asarray(outputs, "float64").tolist()}))
"""

# Loads a `.keras` file with Keras alone (after `import tftune`) and predicts on raw strings.
LOAD_KERAS_FILE = """
import json, sys
import keras
import numpy as np
import tftune
model = keras.saving.load_model(sys.argv[1])
outputs = model.predict(json.loads(sys.argv[2]), verbose=0)
print(json.dumps({"class": type(model).__name__, "outputs": np.asarray(outputs, "float64").tolist()}))
"""

# Serves the run's SavedModel with TensorFlow alone.
SERVE_EXPORT = """
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
probabilities = serve(text=tf.constant(json.loads(sys.argv[2])))["probabilities"].numpy()
print(json.dumps({"outputs": probabilities.astype("float64").tolist()}))
"""


def fresh_process(script, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = preloaded_python.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    output["outputs"] = np.asarray(output["outputs"])
    return output


@pytest.fixture(scope="module")
def ensemble_run(tiny_runs, tmp_path_factory):
    """A finetune run of two classifiers (an ensemble) on the tiny pretrain run."""
    from tftune.finetuning import finetune

    recipe = tiny_runs["recipe"].with_overrides([("finetune.epochs", 1), ("finetune.unfreeze", "all")])
    out = tmp_path_factory.mktemp("ensemble") / "clf"
    finetune(recipe, [tiny_runs["pretrain"], tiny_runs["pretrain"]], out, tiny_runs["labeled"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "ensemble"])
def test_a_classifier_loads_anywhere_and_takes_text(tiny_runs, ensemble_run, tmp_path, kind):
    run = tiny_runs["finetune"] if kind == "classifier" else ensemble_run
    keras_file = tmp_path / "model.keras"
    texts = json.dumps(TEXTS)
    loaded = fresh_process(LOAD_RUN, run, keras_file, texts)
    reloaded = fresh_process(LOAD_KERAS_FILE, keras_file, texts)
    served = fresh_process(SERVE_EXPORT, run / "export", texts)

    assert loaded["class"] == reloaded["class"] == {"classifier": "TextClassifier", "ensemble": "ClassifierEnsemble"}[kind]
    probabilities = loaded["outputs"]
    assert probabilities.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(reloaded["outputs"], probabilities, atol=1e-5)
    np.testing.assert_allclose(served["outputs"], probabilities, atol=1e-5)


@pytest.mark.slow
def test_a_language_model_loads_anywhere_and_takes_text(tiny_runs, tmp_path):
    keras_file = tmp_path / "lm.keras"
    texts = json.dumps(TEXTS[:2])
    loaded = fresh_process(LOAD_RUN, tiny_runs["pretrain"], keras_file, texts)
    reloaded = fresh_process(LOAD_KERAS_FILE, keras_file, texts)

    assert loaded["class"] == reloaded["class"] == "LanguageModel"
    logits = loaded["outputs"]
    assert logits.shape[0] == 2 and logits.shape[2] > 100  # per token, over the vocabulary
    np.testing.assert_allclose(reloaded["outputs"], logits, atol=1e-4)


def test_a_loaded_classifier_fits_and_evaluates_on_raw_strings(tiny_runs):
    import tensorflow as tf

    import tftune
    from tftune.data import read_labeled

    texts, labels = read_labeled(tiny_runs["data"]["valid"])
    model = tftune.load(tiny_runs["finetune"])
    classes = json.loads((tiny_runs["finetune"] / "labels.json").read_text())
    targets = np.array([classes.index(label) for label in labels])
    history = model.fit(texts, targets, epochs=1, batch_size=16, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    in_memory = model.evaluate(texts, targets, verbose=0, return_dict=True)
    dataset = tf.data.Dataset.from_tensor_slices((texts, targets)).batch(8)
    streamed = model.evaluate(dataset, verbose=0, return_dict=True)
    assert in_memory["accuracy"] == pytest.approx(streamed["accuracy"])
    assert in_memory["loss"] == pytest.approx(streamed["loss"], abs=1e-4)


def test_a_task_without_a_preprocessor_says_so():
    from tftune.models import TextBackbone, TextClassifier

    classifier = TextClassifier(TextBackbone(20, 4, "gru", 1, 4), 2)
    with pytest.raises(ValueError, match="no preprocessor"):
        classifier.predict(["some text"], verbose=0)
