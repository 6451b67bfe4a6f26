"""The `keras` row of `bench.accuracy`: a plain Keras classifier of the same cell and vectors as the recipe.

`TextVectorization` → frozen `Embedding` of shipped vectors (aligned to the vectorizer's
vocabulary with `tftune.embeddings.align`) → one recurrent layer → `Dense(softmax)`, Adam, early
stopping on the validation accuracy with the best weights restored. The cell is one of `CELLS`,
the vectors one of `VECTORS`: those of the recipe under test (`choose`), so that a GRU recipe on
word2vec is compared with a Keras GRU on the same word2vec.

Example:

```python
spec = choose(None, None, load_recipe("gru-word2vec"), "gru-word2vec")  # GRU, word2vec
figures = train_and_test(task, sizes, 0, load_vectors(*VECTORS[spec["vectors"]][:2]), spec)
```
"""

import time
from pathlib import Path

from bench import common

UNITS = 256
CELLS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}
# The shipped vectors the baseline can hold: (file, gensim format, name in the results).
VECTORS = {
    "glove": (common.SHIPPED_GLOVE, "glove", "GloVe 50d"),
    "word2vec": (common.PRETRAINED / "word2vec-googlenews-300d-top5k.bin", "word2vec-binary", "word2vec 300d"),
}
# Test accuracy of the default baseline (LSTM on GloVe) measured elsewhere, for comparison.
REFERENCE_ACCURACY = {"trec6": 0.882, "sst2": 0.732}


def vectors_of(recipe):
    """The key of `VECTORS` holding a recipe's vectors, or None.

    GloVe recipes read all 400,000 words of GloVe 6B 50d; the shipped text file is its first 20,000.
    """
    path = Path(recipe.embeddings.path).resolve()
    if path == VECTORS["word2vec"][0].resolve():
        return "word2vec"
    return "glove" if path.name.startswith("glove.6B.50d.") else None


def choose(cell, vectors, recipe, source):
    """`{"cell", "vectors", "chosen_by"}`: the given ones, the others `recipe`'s (named `source`); or why not.

    `cell` and `vectors` are the command line's (`--keras-cell`, `--keras-vectors`) or None;
    `recipe` is needed only when one of them is None.
    """
    chosen_by = {"cell": "--keras-cell", "vectors": "--keras-vectors"}
    if cell is None:
        cell, chosen_by["cell"] = recipe.encoder.cell, source
    if vectors is None:
        vectors, chosen_by["vectors"] = vectors_of(recipe), source
        if vectors is None:
            return (f"{source} reads {common.display_path(recipe.embeddings.path)}, not vectors the baseline ships "
                    f"with: give --keras-vectors")
    if cell not in CELLS:
        return f"{chosen_by['cell']} has cell {cell}, which has no Keras layer here: give --keras-cell"
    return {"cell": cell, "vectors": vectors, "chosen_by": chosen_by}


def description(spec, units):
    """The row's description: its vectors and cell, and where they were chosen."""
    if isinstance(spec, str):
        return "plain Keras: TextVectorization, frozen vectors, recurrent layer, softmax"
    chosen_by = spec["chosen_by"]
    where = (f"cell and vectors of {chosen_by['cell']}" if chosen_by["cell"] == chosen_by["vectors"] else
             f"cell: {chosen_by['cell']}; vectors: {chosen_by['vectors']}")
    return (f"plain Keras: TextVectorization, frozen {VECTORS[spec['vectors']][2]}, "
            f"{CELLS[spec['cell']]}({units}), softmax ({where})")


def train_and_test(task, sizes, seed, vectors, spec):
    """Trains the baseline on a task's splits and scores it on the test split: one seed's figures.

    `vectors` are the loaded KeyedVectors of `spec["vectors"]`; `sizes` holds `keras_units`,
    `keras_epochs`, `keras_patience` and `keras_batch_size`.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from tftune.embeddings import align
    from tftune.metrics import classification_metrics
    from tftune.text import Vocabulary

    keras.backend.clear_session()
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy("float32")
    labels = sorted(set(task["train"][1]))
    label_index = {label: i for i, label in enumerate(labels)}
    vectorizer = keras.layers.TextVectorization(max_tokens=20000)
    vectorizer.adapt(task["train"][0])
    words = vectorizer.get_vocabulary()  # "" (padding), "[UNK]", then the words
    # tftune's Vocabulary puts <pad>, <unk>, <eos> first; drop the <eos> row to match the vectorizer.
    matrix, coverage = align(Vocabulary(words[2:]), vectors, seed=seed)
    matrix = np.delete(matrix, 2, axis=0)
    assert len(matrix) == len(words)

    def dataset(split, shuffle=False):
        texts, split_labels = task[split]
        data = tf.data.Dataset.from_tensor_slices((texts, [label_index[label] for label in split_labels]))
        if shuffle:
            data = data.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
        # Each batch is padded to its longest text; the Embedding masks the padding.
        return data.batch(sizes["keras_batch_size"]).map(lambda x, y: (vectorizer(x), y)).prefetch(tf.data.AUTOTUNE)

    model = keras.Sequential([
        keras.Input(shape=(None,), dtype="int64"),
        keras.layers.Embedding(len(words), matrix.shape[1], embeddings_initializer=keras.initializers.Constant(matrix),
                               trainable=False, mask_zero=True),
        getattr(keras.layers, CELLS[spec["cell"]])(sizes["keras_units"]),
        keras.layers.Dense(len(labels), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=sizes["keras_patience"],
                                         restore_best_weights=True)
    history = model.fit(dataset("train", shuffle=True), validation_data=dataset("valid"), epochs=sizes["keras_epochs"],
                        callbacks=[stop], verbose=2)
    predicted = np.argmax(model.predict(dataset("test"), verbose=0), axis=-1)
    test_metrics = classification_metrics([label_index[label] for label in task["test"][1]], predicted, labels)
    default = (spec["cell"], spec["vectors"]) == ("lstm", "glove")
    return {
        "test_accuracy": test_metrics["accuracy"],
        "test_macro_f1": test_metrics["macro_f1"],
        "valid_accuracy": max(history.history["val_accuracy"]),
        "epochs": len(history.history["loss"]),
        "best_epoch": int(np.argmax(history.history["val_accuracy"])) + 1,
        "seconds": round(time.perf_counter() - started, 1),
        "seed": seed,
        "vocab_size": len(words),
        "vector_type_coverage": round(coverage.type_share, 4),
        "settings": {"vectors": common.display_path(VECTORS[spec["vectors"]][0]), "max_tokens": 20000,
                     "cell": spec["cell"], "units": sizes["keras_units"], "batch_size": sizes["keras_batch_size"],
                     "optimizer": "adam 0.001", "max_epochs": sizes["keras_epochs"],
                     "early_stopping": f"val_accuracy, patience {sizes['keras_patience']}, best weights restored"},
        **({"reference_accuracy": REFERENCE_ACCURACY[task["name"]]} if default else {}),
    }
