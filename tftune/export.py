"""SavedModel export with the tokenizer inside the graph, and loading it back for serving.

The exported `serving_default` signature takes raw sentences and needs nothing but
TensorFlow to run:

- input `text`: `tf.string`, shape `[None]`;
- output `probabilities`: `float32`, shape `[None, n_classes]`;
- output `label`: `tf.string`, shape `[None]`, the most probable class name.

The classifier is rebuilt under the float32 policy with `use_cudnn=False` before export, so
a model trained on a GPU with mixed precision exports without CuDNN ops or float16 outputs.

Example:

>>> import tensorflow as tf
>>> serve = tf.saved_model.load("runs/clf/export").signatures["serving_default"]  # doctest: +SKIP
>>> serve(text=tf.constant(["a gripping , moving film"]))["label"]  # doctest: +SKIP
"""

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftune.errors import DataError, RunError
from tftune.metrics import classification_metrics
from tftune.models import global_policy_restored
from tftune.runs import FinetuneRun
from tftune.staging import fault_point, staged_directory
from tftune.text import EOS, Tokenizer

SIGNATURE = "serving_default"
LABELS_FILE = "labels.json"


def _portable_config(config):
    """`config` with `use_cudnn=False` in every backbone it holds (members of an ensemble too)."""
    if isinstance(config, dict):
        return {key: False if key == "use_cudnn" else _portable_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_portable_config(value) for value in config]
    return config


def portable_copy(model):
    """A float32, non-cuDNN copy of a trained classifier (or ensemble) with the same weights.

    Rebuilt with `from_config` under the float32 policy, so a model trained with mixed precision
    on a GPU exports without CuDNN ops or float16 outputs.
    """
    with global_policy_restored():
        keras.mixed_precision.set_global_policy("float32")
        copy = type(model).from_config(_portable_config(model.get_config()))
        copy.set_weights([np.asarray(w, dtype="float32") for w in model.get_weights()])
        return copy


def export_classifier(classifier, vocab, tokenizer: Tokenizer, labels, max_len, out):
    """Writes a raw-string SavedModel of `classifier` to `out` (atomically).

    Args:
        classifier: the trained `TextClassifier` or `ClassifierEnsemble`.
        vocab: the `Vocabulary` the model was trained with.
        tokenizer: the `Tokenizer` the model was trained with.
        labels: class names in output order.
        max_len: documents are cut to their first `max_len` ids, as in training.
        out: the export directory to create.
    """
    model = portable_copy(classifier)
    table = vocab.tf_lookup_table()
    eos_id = vocab.token_to_id(EOS)
    label_names = tf.constant(list(labels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        tokens = tokenizer.tf_tokenize(text)
        ids = tf.cast(table.lookup(tokens), tf.int32)
        eos = tf.fill([tf.shape(text)[0], 1], eos_id)
        ids = tf.concat([ids, tf.RaggedTensor.from_tensor(eos)], axis=1)[:, :max_len]
        logits = model(ids.to_tensor(0), training=False)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"probabilities": probabilities, "label": tf.gather(label_names, tf.argmax(probabilities, axis=-1))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(table)
    archive.add_endpoint(SIGNATURE, serve)
    out = Path(out)
    with staged_directory(out, fault="export-publish") as staging:
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
        return json.loads(labels_file.read_text(encoding="utf-8"))

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
    unknown = sorted(set(labels) - set(predictor.labels))
    if unknown:
        raise DataError(
            f"{source}: label(s) {', '.join(map(repr, unknown[:5]))} unknown to the model "
            f"(it knows {', '.join(map(repr, predictor.labels))})"
        )
    predicted, _ = predictor.predict(texts)
    index = {label: i for i, label in enumerate(predictor.labels)}
    return classification_metrics(
        [index[label] for label in labels], [index[label] for label in predicted], predictor.labels
    )

