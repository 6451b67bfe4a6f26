"""The preprocessor: raw strings to the token ids a backbone reads, inside the Keras graph.

`TextPreprocessor` is the part of a task that training and serving share (keras-hub's
preprocessor): the tokenizer (`tftune.text.Tokenizer`'s TensorFlow twin, the same tokens as the
Python side that trained the model), the vocabulary (saved as an asset of `.keras` files and
presets, not in the config), `<eos>` at the end of each text and the cut to `max_len`. It is a
Keras layer, so a task that holds one takes text: `model.predict(["some text"])`.

Example:

>>> from tftune.text import Vocabulary
>>> vocab = Vocabulary(["the", "film", "."])
>>> preprocessor = TextPreprocessor(vocab.tokens, max_len=8)
>>> preprocessor(["The film .", "A film"]).numpy().tolist()
[[3, 4, 5, 2], [1, 4, 2, 0]]
"""

from pathlib import Path

import keras
import tensorflow as tf

from tftune.text import EOS_ID, PAD_ID, UNK_ID, Tokenizer, Vocabulary

VOCABULARY_FILE = "vocabulary.txt"


@keras.saving.register_keras_serializable(package="tftune")
class TextPreprocessor(keras.layers.Layer):
    """Raw strings `[batch]` to right-padded int32 ids `[batch, time]` (0 is padding).

    Each text is tokenized in the graph, its tokens looked up in the vocabulary (`<unk>` for
    unknown ones), `<eos>` appended, and the ids cut to their first `max_len`, exactly as
    `tftune.data` prepares training documents; the batch is padded to its longest row.

    Args:
        vocabulary: the tokens in id order (`Vocabulary.tokens`: `<pad>`, `<unk>`, `<eos>` first),
            or None to set later (`set_vocabulary`, or the `.keras` file's assets).
        lowercase: lowercase the text before splitting it, as the vectors' vocabulary needs.
        max_len: keep the first `max_len` ids of each text (`<eos>` included); None keeps all.
        **kwargs: passed to `keras.layers.Layer` (`name`, default `"preprocessor"`).

    Example:

    >>> preprocessor = TextPreprocessor(["<pad>", "<unk>", "<eos>", "good"], max_len=2)
    >>> preprocessor(["good good good"]).numpy().tolist()
    [[3, 3]]
    """

    def __init__(self, vocabulary=None, lowercase=True, max_len=None, **kwargs):
        kwargs.setdefault("name", "preprocessor")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        # Strings go in as they are: Keras would otherwise try to cast them to the layer's float dtype.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.lowercase = bool(lowercase)
        self.max_len = max_len
        self.tokenizer = Tokenizer(lowercase=self.lowercase)
        self.vocabulary = None
        self.lookup_table = None
        self.built = True  # no weights: nothing to build, and no build config in saved files
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # === Vocabulary ===

    def set_vocabulary(self, vocabulary):
        """Sets the tokens (a list in id order, or a `Vocabulary`) and builds the lookup table."""
        self.vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary(vocabulary)
        tokens = self.vocabulary.tokens
        if tokens[:3] != Vocabulary([]).tokens:
            raise ValueError("the vocabulary must start with <pad>, <unk> and <eos>")
        initializer = tf.lookup.KeyValueTensorInitializer(
            keys=tf.constant(tokens, dtype=tf.string), values=tf.range(len(tokens), dtype=tf.int64)
        )
        self.lookup_table = tf.lookup.StaticHashTable(initializer, default_value=UNK_ID)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def save_assets(self, dir_path):
        self.vocabulary.save(Path(dir_path) / VOCABULARY_FILE)

    def load_assets(self, dir_path):
        self.set_vocabulary(Vocabulary.load(Path(dir_path) / VOCABULARY_FILE))

    # === Preprocessing ===

    def call(self, texts):
        return self.ragged_ids(texts).to_tensor(PAD_ID)

    def ragged_ids(self, texts):
        """The ids of each text, unpadded: an int32 `tf.RaggedTensor` `[batch, (time)]`.

        What `call` pads; a task that takes texts in memory batches these rows by length.
        """
        if self.lookup_table is None:
            raise ValueError(f"{self.name} has no vocabulary: set_vocabulary() first")
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        if texts.shape.rank == 2:  # a column of texts, e.g. a DataFrame's values
            texts = tf.squeeze(texts, axis=1)
        tokens = self.tokenizer.tf_tokenize(texts)
        ids = tf.cast(self.lookup_table.lookup(tokens), tf.int32)
        eos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(texts)[0], 1], EOS_ID))
        ids = tf.concat([ids, eos], axis=1)
        if self.max_len is not None:
            ids = ids[:, : self.max_len]
        return ids

    def compute_output_spec(self, texts):
        return keras.KerasTensor((texts.shape[0], None), dtype="int32")

    def get_config(self):
        # The vocabulary is an asset (`save_assets`), not part of the config.
        return {**super().get_config(), "lowercase": self.lowercase, "max_len": self.max_len}


def holds_text(data):
    """Whether `data` (an array, list, tensor or the first part of a dataset's elements) is strings."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        spec = spec[0] if isinstance(spec, tuple) else spec
        return getattr(spec, "dtype", None) == tf.string
    if isinstance(data, tf.Tensor):
        return data.dtype == tf.string
    if hasattr(data, "tolist") and not hasattr(data, "dtype"):  # a pandas Series
        data = data.tolist()
    if isinstance(data, (list, tuple)):
        return bool(data) and all(isinstance(item, (str, bytes)) for item in data)
    return getattr(getattr(data, "dtype", None), "kind", None) in ("U", "S", "O")
