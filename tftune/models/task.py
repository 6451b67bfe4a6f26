"""The base of tftune's tasks: a backbone and a preprocessor, and `fit`/`evaluate`/`predict` on raw strings.

A `Task` (keras-hub's shape) is a Keras model over token ids that also holds the
`TextPreprocessor` turning text into those ids. Its `fit`, `evaluate` and `predict` take either:

- token ids, as any Keras model does (tftune's own training pipeline batches ids by length), or
- raw strings: a list, a NumPy array or pandas Series of strings, or a `tf.data.Dataset` whose
  elements (or their first part) are batches of strings.

Strings in memory are tokenized once by the preprocessor and their ids batched as tftune's
fine-tuning batches them (`tftune.batches.length_batches`): `fit` with `shuffle` (the default)
draws batches of similar lengths, each padded to its longest text, in a new order every epoch;
`evaluate` batches them by length too; `fit(shuffle=False)` and `predict` keep the texts' order.
A dataset's string batches are the user's batching: the preprocessor maps them to ids in the
input pipeline, batch by batch.

Example:

```python
classifier = tftune.load("runs/clf")
classifier.predict(["a gripping, moving film"])          # class probabilities
classifier.fit(texts, labels, epochs=1)                  # texts: a list of strings
classifier.evaluate(tf.data.Dataset.from_tensor_slices((texts, labels)).batch(32))
```
"""

import keras
import numpy as np
import tensorflow as tf

from tftune.batches import length_batches
from tftune.models.preprocessor import holds_text

DEFAULT_BATCH_SIZE = 32  # Keras' own default for arrays
TOKENIZE_CHUNK = 4096  # texts the preprocessor tokenizes at once when they are in memory


def _as_list(values):
    """A list of a list, a NumPy array or a pandas Series."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _draw_seed():
    """A seed for one `fit`'s shuffles, from TensorFlow's global seed (`keras.utils.set_random_seed`)."""
    return int(tf.random.uniform([], maxval=2**31 - 1, dtype=tf.int64))


class Task:
    """The mixin of a Keras model over token ids with a `preprocessor` that lets it take text.

    A task class lists it before `keras.Model` (`class TextClassifier(ClassifierTask, keras.Model)`):
    a mixin, because Keras rewrites the bases of the classes above a functional model's, and a
    shared base class would turn every task functional. Subclasses build the model and then set
    `self.backbone` and `self.preprocessor` (`TextPreprocessor`, or None for ids only).
    """

    # Rows of one `predict` on texts are padded to one length (a language model's outputs are per
    # token, so batches of different lengths would not stack); classifiers pad batch by batch.
    pads_predictions_to_one_length = False

    def _require_preprocessor(self):
        if getattr(self, "preprocessor", None) is None:
            raise ValueError(
                f"{self.name} has no preprocessor, so it takes token ids, not text: build it with "
                "preprocessor=TextPreprocessor(...) or load it with tftune.load"
            )
        return self.preprocessor

    def _preprocess_sample(self, texts, *rest):
        return (self._require_preprocessor()(texts), *rest)

    def _text_batches(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False, by_length=True, seed=0):
        """The `(ids, ...)` batches of texts in memory, tokenized once (see `length_batches`).

        Returns a `tftune.batches.ShuffledEpochs` with `shuffle`, else a `tf.data.Dataset` of one
        epoch: with `by_length`, texts of similar lengths batched together; without, in their order.
        """
        ids = self._tokenize(_as_list(x))
        columns = [np.asarray(_as_list(part)) for part in (y, sample_weight) if part is not None]
        return length_batches(ids, columns, batch_size or DEFAULT_BATCH_SIZE, shuffle=shuffle, seed=seed,
                              by_length=by_length)

    def _tokenize(self, texts):
        """One int32 array of ids per text, by the preprocessor, `TOKENIZE_CHUNK` texts at a time."""
        preprocessor = self._require_preprocessor()
        id_lists = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            ragged = preprocessor.ragged_ids(tf.constant(texts[start : start + TOKENIZE_CHUNK], dtype=tf.string))
            id_lists += np.split(ragged.flat_values.numpy(), np.cumsum(ragged.row_lengths().numpy())[:-1])
        return id_lists

    def _text_dataset(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False, by_length=True):
        """The `(ids, ...)` batches of texts `x` as one `tf.data.Dataset`: a dataset of string
        batches mapped batch by batch; texts in memory as `_text_batches` makes them (with
        `shuffle`, its first epoch, in an order drawn from TensorFlow's global seed)."""
        if isinstance(x, tf.data.Dataset):
            return x.map(self._preprocess_sample, num_parallel_calls=tf.data.AUTOTUNE)
        batches = self._text_batches(x, y, sample_weight, batch_size, shuffle=shuffle, by_length=by_length,
                                     seed=_draw_seed() if shuffle else 0)
        return batches.epochs(0, 1) if shuffle else batches

    def fit(self, x=None, y=None, **kwargs):
        if holds_text(x):
            sample_weight, batch_size = kwargs.pop("sample_weight", None), kwargs.pop("batch_size", None)
            if kwargs.get("shuffle", True) and not isinstance(x, tf.data.Dataset):
                # Batches of similar lengths in a new order every epoch, epoch e's order drawn from
                # (seed, e); Keras runs one iterator over the epochs back to back.
                batches = self._text_batches(x, y, sample_weight, batch_size, shuffle=True, seed=_draw_seed())
                x = batches.epochs(kwargs.get("initial_epoch", 0), kwargs.get("epochs", 1))
                if kwargs.get("steps_per_epoch") is None:
                    kwargs["steps_per_epoch"] = batches.steps_per_epoch
            else:  # the texts in their order, or the dataset's own batches
                x = self._text_dataset(x, y, sample_weight, batch_size, by_length=False)
            y, kwargs["shuffle"] = None, False  # shuffled above, before batching
        validation = kwargs.get("validation_data")
        if validation is not None and not isinstance(validation, tf.data.Dataset) and holds_text(validation[0]):
            kwargs["validation_data"] = self._text_dataset(*validation, batch_size=kwargs.get("validation_batch_size"))
        elif isinstance(validation, tf.data.Dataset) and holds_text(validation):
            kwargs["validation_data"] = self._text_dataset(validation)
        return super().fit(x, y, **kwargs)

    def evaluate(self, x=None, y=None, **kwargs):
        if holds_text(x):
            x = self._text_dataset(x, y, kwargs.pop("sample_weight", None), kwargs.pop("batch_size", None))
            y = None
        return super().evaluate(x, y, **kwargs)

    def predict(self, x, **kwargs):
        if holds_text(x):
            if self.pads_predictions_to_one_length and not isinstance(x, tf.data.Dataset):
                x = self._require_preprocessor()(tf.constant(_as_list(x)))
            else:
                x = self._text_dataset(x, batch_size=kwargs.pop("batch_size", None), by_length=False)
        return super().predict(x, **kwargs)


class ClassifierTask(Task):
    """A task whose call returns float32 logits over classes; `predict` returns their probabilities.

    `compile_for_classes` compiles it with the loss and metric every tftune classifier trains with
    (sparse cross-entropy on logits, accuracy); `tftune.load` returns classifiers compiled so.
    """

    def compile_for_classes(self, optimizer="adam", **kwargs):
        """`compile` with the classifiers' loss (sparse cross-entropy on logits) and accuracy."""
        self.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"], **kwargs)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return keras.ops.softmax(self(x, training=False), axis=-1)
