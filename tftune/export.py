"""SavedModel export with the tokenizer inside the graph, and loading it back for serving.

The exported `serving_default` signature takes raw sentences and needs nothing but
TensorFlow to run:

- input `text`: `tf.string`, shape `[None]`;
- output `probabilities`: `float32`, shape `[None, n_classes]`;
- output `label`: `tf.string`, shape `[None]`, the most probable class name.

The classifier task is exported as it is, with its preprocessor: its probabilities are those of
`classifier.predict` on the same strings. It is traced in float32 with the portable recurrent
kernels (`portable_trace`), so a model trained on a GPU with mixed precision exports without
cuDNN or float16 ops.

Example:

>>> import tensorflow as tf
>>> serve = tf.saved_model.load("runs/clf/export").signatures["serving_default"]  # doctest: +SKIP
>>> serve(text=tf.constant(["a gripping , moving film"]))["label"]  # doctest: +SKIP
"""

import contextlib
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftune.errors import RunError
from tftune.metrics import check_known_labels, classification_metrics
from tftune.runs import FinetuneRun, read_json
from tftune.staging import fault_point, staged_directory

SIGNATURE = "serving_default"
LABELS_FILE = "labels.json"


@contextlib.contextmanager
def portable_trace(model):
    """Traces `model` as a CPU serves it best: float32 compute and the portable recurrent kernels.

    A model trained on a GPU with mixed precision computes in float16 and may pick cuDNN; its
    variables are float32 either way. Layers read their dtype policy and `use_cudnn` when they
    are traced, so setting them for the trace and putting them back exports the same weights
    without float16 or cuDNN ops, and leaves the model as it was.
    """
    layers = list(_nested_layers(model))
    policies = [layer.dtype_policy for layer in layers]
    kernels = [(layer, layer.use_cudnn) for layer in layers if hasattr(layer, "use_cudnn")]
    try:
        for layer in layers:
            layer.dtype_policy = "float32"
        for layer, _ in kernels:
            layer.use_cudnn = False
        yield model
    finally:
        for layer, policy in zip(layers, policies):
            layer.dtype_policy = policy
        for layer, use_cudnn in kernels:
            layer.use_cudnn = use_cudnn


def _nested_layers(layer):
    """`layer` and every layer inside it: the layers of models, and recurrent layers' cells."""
    yield layer
    for inner in [*getattr(layer, "layers", ()), getattr(layer, "cell", None)]:
        if isinstance(inner, keras.layers.Layer):  # a backbone's `cell` is the cell's name
            yield from _nested_layers(inner)


def export_classifier(classifier, labels, out):
    """Writes a raw-string SavedModel of a trained classifier task to `out` (atomically).

    The task is exported as it is: its own `preprocessor` (tokenizer, vocabulary, `max_len`)
    turns the strings into ids, and its probabilities are those of `classifier.predict`.

    Args:
        classifier: the trained `TextClassifier` or `ClassifierEnsemble`, with its preprocessor.
        labels: class names in output order.
        out: the export directory to create.
    """
    preprocessor = classifier._require_preprocessor()
    label_names = tf.constant(list(labels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        probabilities = tf.nn.softmax(classifier(preprocessor(text), training=False), axis=-1)
        return {"probabilities": probabilities, "label": tf.gather(label_names, tf.argmax(probabilities, axis=-1))}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(out, fault="export-publish") as staging:
        with portable_trace(classifier):
            # The variables the endpoint reads are tracked with it; tracking the model itself would
            # also save its optimizer and compiled state, which serving does not need.
            archive = keras.export.ExportArchive()
            archive.track(preprocessor.lookup_table)
            archive.add_endpoint(SIGNATURE, serve)
            archive.write_out(str(staging), verbose=False)
        fault_point("export")
        # TensorFlow's convention for files that serving does not read: assets.extra/.
        (staging / "assets.extra").mkdir()
        (staging / "assets.extra" / LABELS_FILE).write_text(json.dumps(list(labels)) + "\n", encoding="utf-8")
    return out


# === Serving ===


def find_export(path):
    """The SavedModel directory of an export or of a finetune run (its `export/`)."""
    path = Path(path)
    for candidate in (path, FinetuneRun(path).export):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise RunError(f"{path}: neither a SavedModel export nor a finetune run with an export/ directory")


class Predictor:
    """Runs an exported SavedModel on raw strings, in batches.

    Args:
        path: an export directory or a finetune run directory.
        batch_size: strings per call of the signature.
    """

    def __init__(self, path, batch_size=256):
        self.path = find_export(path)
        self.batch_size = batch_size
        self._signature = tf.saved_model.load(str(self.path)).signatures[SIGNATURE]
        self.labels = self._read_labels()

    def _read_labels(self):
        labels_file = self.path / "assets.extra" / LABELS_FILE
        if not labels_file.is_file():
            raise RunError(f"{self.path}: export has no assets.extra/{LABELS_FILE}; was it written by tftune?")
        return read_json(labels_file)

    def predict(self, texts):
        """Returns `(labels, probabilities)` for a list of strings."""
        names, probabilities = [], []
        for start in range(0, len(texts), self.batch_size):
            outputs = self._signature(text=tf.constant(texts[start : start + self.batch_size], dtype=tf.string))
            names.extend(label.decode("utf-8") for label in outputs["label"].numpy())
            probabilities.append(outputs["probabilities"].numpy())
        if not probabilities:
            return names, np.zeros((0, len(self.labels)), "float32")
        return names, np.concatenate(probabilities)


def evaluate_export(path, texts, labels, source="data"):
    """Metrics of an exported model on labeled texts (labels must be known to the model)."""
    predictor = Predictor(path)
    check_known_labels(labels, predictor.labels, source)
    predicted, _ = predictor.predict(texts)
    index = {label: i for i, label in enumerate(predictor.labels)}
    return classification_metrics(
        [index[label] for label in labels], [index[label] for label in predicted], predictor.labels
    )


