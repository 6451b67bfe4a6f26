"""Replica arithmetic under `tf.distribute`: the global batch, loss scaling, clipping after the all-reduce.

The recipe's batch size is the global batch: each step splits it over the replicas and sums
their gradients of the per-replica loss divided by the number of replicas, so the update is the
single-device one and the learning rate needs no scaling. The findings behind each function are
in `tftune.distribute`'s notes; the tests are in `tests/test_distribute.py`.

Example:

>>> from tftune.replicas import check_global_batch
>>> check_global_batch(32)
32
"""

from tftune.errors import RecipeError
from tftune.keras_private import ClipAfterAllReduce


def current_strategy(strategy=None):
    """`strategy`, or TensorFlow's current one when it is None."""
    import tensorflow as tf

    return tf.distribute.get_strategy() if strategy is None else strategy


def check_global_batch(batch_size, strategy=None, what="batch_size"):
    """The per-replica batch of a global `batch_size`; a batch smaller than the replicas is an error.

    A batch that the replicas do not divide still trains (TensorFlow gives some replicas one
    example more), but then the replicas' mean losses weigh examples slightly unequally.
    """
    replicas = current_strategy(strategy).num_replicas_in_sync
    if batch_size < replicas:
        raise RecipeError(
            f"{what} = {batch_size} is the global batch and must be at least the number of replicas ({replicas})"
        )
    return batch_size // replicas


def distribute_dataset(dataset, strategy=None):
    """`strategy.experimental_distribute_dataset` over global batches, sharded by data.

    Every worker reads the same dataset (same seed) and keeps its share of each global batch;
    `AutoShardPolicy.DATA` says so up front (there are no files to shard by). Keras' `fit` does
    the distribution itself; pass the result to `fit_custom_loop` or a `strategy.run` loop.
    """
    import tensorflow as tf

    strategy = current_strategy(strategy)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def replicas_in_sync():
    """The number of replicas of the current strategy (1 outside any)."""
    return current_strategy().num_replicas_in_sync


def scale_loss_for_replicas(loss):
    """`loss / replicas`: what a custom `train_step` must differentiate when its loss is a mean
    over the replica's own batch, so that summing the replicas' gradients gives the gradient
    of the global batch's mean loss. Keras' own losses already do this (see
    `keras.src.losses.loss.scale_loss_for_distribution`)."""
    replicas = replicas_in_sync()
    return loss if replicas == 1 else loss / replicas


# === Gradient clipping across replicas ===


_CLIPPING_CLASSES = {}


def clip_after_all_reduce(optimizer_class):
    """A subclass of a Keras optimizer class with `tftune.keras_private.ClipAfterAllReduce`:
    gradients summed over the replicas before they are clipped (same name and config)."""
    if issubclass(optimizer_class, ClipAfterAllReduce):
        return optimizer_class
    if optimizer_class not in _CLIPPING_CLASSES:
        _CLIPPING_CLASSES[optimizer_class] = type(
            optimizer_class.__name__, (ClipAfterAllReduce, optimizer_class), {"__module__": __name__}
        )
    return _CLIPPING_CLASSES[optimizer_class]


