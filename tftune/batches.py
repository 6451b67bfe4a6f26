"""The `tf.data` pipelines that feed training: language-model windows and length-bucketed
classification batches (`length_batches`, which also batches a task's texts in memory).

The training pipelines (`lm_dataset`, `classification_dataset` with `shuffle=True`) return a
`ShuffledEpochs`: each epoch's batch order depends on the seed and the epoch alone, so a resumed
run draws what an uninterrupted one does (`tftune.distribute.fit_from`).

Example:

>>> from tftune.batches import lm_dataset
>>> lm_dataset(list(range(1001)), seq_len=10, batch_size=32, shuffle=True).steps_per_epoch  # doctest: +SKIP
4
"""

from tftune.errors import DataError


# === Training epochs ===


class ShuffledEpochs:
    """The batches of a training set in a new order every epoch, epoch `e`'s order a pure
    function of `(seed, e)`.

    `epochs(first, last)` is the `tf.data.Dataset` of those epochs back to back, for `fit` with
    `steps_per_epoch`. Every iteration of it starts at epoch `first`, however often the data was
    iterated before, so Keras' own extra iterations (e.g. to build the model under a strategy)
    change nothing, and a run resumed at epoch `e` draws what an uninterrupted run does there,
    with nothing replayed.

    Args:
        one_epoch: `epoch -> tf.data.Dataset` of that epoch's batches (`epoch`: an int64 scalar tensor).
        steps_per_epoch: batches in every epoch.

    Example:

    >>> train = lm_dataset(np.arange(1001), seq_len=10, batch_size=32, shuffle=True, seed=3)
    >>> train.steps_per_epoch
    4
    >>> model.fit(train.epochs(0, 3), epochs=3, steps_per_epoch=train.steps_per_epoch)  # doctest: +SKIP
    """

    def __init__(self, one_epoch, steps_per_epoch):
        self.one_epoch = one_epoch
        self.steps_per_epoch = steps_per_epoch

    def epochs(self, first, last):
        """The batches of epochs `first` ... `last - 1`, back to back (Keras' `initial_epoch` and `epochs`)."""
        import tensorflow as tf

        dataset = tf.data.Dataset.range(first, last).flat_map(self.one_epoch)
        # flat_map loses the length; Keras needs it to tell the end of the data from that of an epoch.
        length = tf.data.experimental.assert_cardinality((last - first) * self.steps_per_epoch)
        return dataset.apply(length).prefetch(tf.data.AUTOTUNE)

    def cardinality(self):
        """The batches of one epoch (what `tf.data.Dataset.cardinality` gives for an epoch's dataset)."""
        return self.steps_per_epoch


def _epoch_key(seed, epoch):
    """The stateless random key of one epoch (`epoch`: an int64 tensor)."""
    import tensorflow as tf

    return tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])


def _shuffled_range(n, key):
    """A permutation of `0 ... n-1` that depends on `key` alone."""
    import tensorflow as tf

    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)


# === Language-model windows ===


def lm_windows(ids, seq_len):
    """Cuts a flat id stream into contiguous `(inputs, targets)` windows shifted by one token."""
    n_windows = (len(ids) - 1) // seq_len
    if n_windows < 1:
        raise DataError(f"corpus too small: {len(ids)} tokens for sequence length {seq_len}")
    usable = n_windows * seq_len
    inputs = ids[:usable].reshape(n_windows, seq_len)
    targets = ids[1 : usable + 1].reshape(n_windows, seq_len)
    return inputs, targets


def lm_dataset(ids, seq_len, batch_size, shuffle=False, seed=0):
    """`(inputs, targets)` LM batches of shape `[batch, seq_len]` (see `lm_windows`).

    Args:
        ids: the flat id stream of the corpus.
        seq_len: tokens per window.
        batch_size: windows per batch.
        shuffle: draw the windows in another order every epoch (training).
        seed: the shuffle's seed.

    Returns:
        Without `shuffle`, a `tf.data.Dataset` of the windows in corpus order; with it, a
        `ShuffledEpochs`.

    Example:

    >>> valid = lm_dataset(np.arange(1001), seq_len=10, batch_size=32)
    >>> [tuple(x.shape) for x, _ in valid]  # doctest: +SKIP
    [(32, 10), (32, 10), (32, 10), (4, 10)]
    """
    import numpy as np
    import tensorflow as tf

    inputs, targets = lm_windows(np.asarray(ids, dtype="int32"), seq_len)
    n_windows = len(inputs)
    inputs, targets = tf.constant(inputs), tf.constant(targets)

    def batches(order):
        windows = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return windows.map(lambda rows: (tf.gather(inputs, rows), tf.gather(targets, rows)))

    if not shuffle:
        return batches(tf.range(n_windows)).prefetch(tf.data.AUTOTUNE)

    def one_epoch(epoch):
        return batches(_shuffled_range(n_windows, _epoch_key(seed, epoch)))

    return ShuffledEpochs(one_epoch, steps_per_epoch=-(-n_windows // batch_size))


# === Classification batches ===


def truncate(id_lists, max_len):
    """Keeps the first `max_len` ids of every document (the export graph does the same)."""
    return [ids[:max_len] for ids in id_lists]


# Documents sorted by length within pools of this many batches: batches then hold nearly equal
# lengths (little padding) while the pools keep the order random from epoch to epoch.
BATCHES_PER_POOL = 50


def classification_dataset(id_lists, labels, batch_size, shuffle=False, seed=0):
    """Right-padded `(ids, label)` batches of documents of similar length, to keep padding small.

    Documents are taken in pools of `BATCHES_PER_POOL` batches (in a new random order every
    epoch when `shuffle`, else in their order), sorted by length inside each pool and cut into
    batches, and with `shuffle` the batches are shuffled too, so every batch is padded only to
    its own longest document. An epoch is `ceil(len(id_lists) / batch_size)` batches. (It is
    `length_batches` with the labels as the one column.)

    Args:
        id_lists: one int array per document (already truncated).
        labels: int class index per document.
        batch_size: examples per batch.
        shuffle: draw examples (and so batches) in another order every epoch (training).
        seed: the shuffle's seed.

    Returns:
        Without `shuffle`, a `tf.data.Dataset` of one epoch (its length known to Keras); with
        it, a `ShuffledEpochs`.

    Example:

    >>> dataset = classification_dataset([np.array([5, 6]), np.array([7])], [0, 1], batch_size=2)
    >>> [ids.numpy().tolist() for ids, _ in dataset]  # shortest first  # doctest: +SKIP
    [[[7, 0], [5, 6]]]
    >>> documents = [np.array([5, 6]), np.array([7]), np.array([8, 9, 4])]
    >>> train = classification_dataset(documents, [0, 1, 2], batch_size=1, shuffle=True, seed=2)
    >>> [int(labels[0]) for _, labels in train.epochs(0, 2)]  # two epochs, two orders  # doctest: +SKIP
    [1, 0, 2, 2, 1, 0]
    """
    import numpy as np

    return length_batches(id_lists, (np.asarray(labels, dtype="int32"),), batch_size, shuffle=shuffle, seed=seed)


def length_batches(id_lists, columns, batch_size, shuffle=False, seed=0, by_length=True):
    """Right-padded `(ids, *columns)` batches of documents, of similar lengths with `by_length`.

    `classification_dataset`'s batching (see there) with any per-document columns (labels of
    any shape and dtype, sample weights), each batch gathering its documents' rows of every
    column. Without `by_length` (and without `shuffle`), documents are batched in their order.

    Args:
        id_lists: one int array per document (already truncated).
        columns: arrays whose first axis runs over the documents; none gives batches of ids alone.
        batch_size: examples per batch.
        shuffle: draw examples (and so batches) in another order every epoch (training).
        seed: the shuffle's seed.
        by_length: sort the documents by length within pools of `BATCHES_PER_POOL` batches.

    Returns:
        Without `shuffle`, a `tf.data.Dataset` of one epoch (its length known to Keras); with
        it, a `ShuffledEpochs`.
    """
    import numpy as np
    import tensorflow as tf

    n_documents = len(id_lists)
    lengths = np.asarray([len(ids) for ids in id_lists], dtype="int64")
    starts = tf.constant(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("int64"))
    flat_ids = tf.constant(np.concatenate([np.zeros(0, "int32"), *id_lists]).astype("int32"))
    columns = tuple(tf.constant(np.asarray(column)) for column in columns)
    n_batches = -(-n_documents // batch_size)
    # Sorting by (pool, length) sorts each pool of `batch_size * BATCHES_PER_POOL` places by
    # length; a pool is a whole number of batches, so no batch straddles two pools.
    pools = tf.range(n_documents, dtype=tf.int64) // (batch_size * BATCHES_PER_POOL)
    pool_keys = pools * (int(lengths.max(initial=0)) + 1)
    lengths = tf.constant(lengths)

    def padded_batch(documents):
        batch_lengths = tf.gather(lengths, documents)
        positions = tf.range(tf.reduce_max(batch_lengths), dtype=tf.int64)
        real = positions[None, :] < batch_lengths[:, None]
        ids = tf.gather(flat_ids, tf.where(real, tf.gather(starts, documents)[:, None] + positions[None, :], 0))
        ids = tf.where(real, ids, 0)
        return (ids, *(tf.gather(column, documents) for column in columns)) if columns else ids

    def batches(documents, batch_order):
        """`documents` (an order of them all), sorted by length within pools, batched, in `batch_order`."""
        if by_length:
            documents = tf.gather(documents, tf.argsort(pool_keys + tf.gather(lengths, documents), stable=True))
        return tf.data.Dataset.from_tensor_slices(batch_order).map(
            lambda batch: padded_batch(documents[batch * batch_size : (batch + 1) * batch_size]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    if not shuffle:
        return batches(tf.range(n_documents, dtype=tf.int64), tf.range(n_batches)).prefetch(tf.data.AUTOTUNE)

    def one_epoch(epoch):
        # Two keys from the epoch's: the documents' order and the batches' order.
        documents_key, batches_key = tf.unstack(tf.random.experimental.stateless_split(_epoch_key(seed, epoch), num=2))
        return batches(_shuffled_range(n_documents, documents_key), _shuffled_range(n_batches, batches_key))

    return ShuffledEpochs(one_epoch, steps_per_epoch=n_batches)
