"""Training under `MultiWorkerMirroredStrategy`, where Keras 3's `model.fit` and `model.evaluate` fail.

`model.fit` and `model.evaluate` fail under `MultiWorkerMirroredStrategy` in Keras 3
(keras#20585): to build the model they mean-reduce the first input batch across the workers,
which raises `ValueError: Attempt to convert a value (PerReplica...)`, and past that, their
step reduces the scalar metrics along axis 0. Under that strategy `tftune.distribute.fit` and
`evaluate` switch to `fit_custom_loop`/`evaluate_custom_loop`, which build the model from the data's
`element_spec` and run the model's own `train_step`/`test_step` through `strategy.run`; on
unshuffled data two workers end with one device's weights. Every worker draws the same
batches (shuffled ones too: their order depends on the seed and the epoch alone) and keeps
its share of every global batch.

This module exists only for that Keras bug: when `test_keras_fit_still_fails_under_multi_worker`
(`tests/test_distribute.py`) fails, Keras' own `fit` works there, and `tftune.distribute.fit` and
`evaluate` can call it under every strategy and this module can be deleted.

Example:

```python
strategy = make_strategy("multi-worker")  # first, before any other TensorFlow work
with strategy.scope():
    model = build_and_compile()
fit_custom_loop(model, train.epochs(0, 2), epochs=2, steps_per_epoch=train.steps_per_epoch)
```
"""

from tftune.keras_private import symbolic_build
from tftune.replicas import distribute_dataset


def _reduce_mean(strategy, outputs):
    import tensorflow as tf

    return tf.nest.map_structure(lambda value: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None), outputs)


def _prepare(model, dataset, strategy):
    """Builds the model, its compiled loss and metrics and its optimizer under `strategy`'s scope,
    as `fit` does before it traces its step.

    Works from the dataset's `element_spec`, not a batch: Keras reduces a batch across the
    workers to build from it, which fails under `MultiWorkerMirroredStrategy` (keras#20585).
    """
    with strategy.scope():
        symbolic_build(model, dataset.element_spec)


def _with_class_weight(dataset, class_weight):
    import tensorflow as tf

    n_classes = max(class_weight) + 1
    weights = tf.constant([float(class_weight.get(i, 1.0)) for i in range(n_classes)], tf.float32)
    return dataset.map(lambda x, y: (x, y, tf.gather(weights, tf.cast(tf.reshape(y, [-1]), tf.int32))))


def _metric_logs(model):
    """The model's metrics, read in the cross-replica context: summed over every replica (and
    worker), so exact for the whole epoch. Every worker must read them (a collective)."""
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def _steps(dataset):
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality >= 0 else None


def _run_steps(step, iterator, steps, on_begin=None, on_end=None, stop=lambda: False):
    """Calls `step(iterator)` until the data ends (or `steps`), with optional per-step hooks."""
    import tensorflow as tf

    done = 0
    logs = {}
    while steps is None or done < steps:
        if on_begin is not None:
            on_begin(done)
        try:
            logs = step(iterator)
        except (StopIteration, tf.errors.OutOfRangeError):
            break
        if on_end is not None:
            on_end(done, {name: float(value) for name, value in logs.items()})
        done += 1
        if stop():
            break
    return done, logs


def _step_function(model, strategy, method):
    """A `tf.function` running `method` (the model's `train_step` or `test_step`) on every replica.

    Made anew for every `fit_custom_loop`/`evaluate_custom_loop` call, as `compile` makes Keras
    build a new train function: the trace holds the trainable variables and metrics of the moment.
    """
    import tensorflow as tf


    def step(iterator):
        return _reduce_mean(strategy, strategy.run(method, args=(next(iterator),)))

    return tf.function(step)


def _evaluate(model, data, strategy, step):
    model.reset_metrics()
    _run_steps(step, iter(distribute_dataset(data, strategy)), _steps(data))
    return _metric_logs(model)


def evaluate_custom_loop(model, data, strategy=None):
    """Evaluates a compiled model on `data` (global batches) with `strategy.run(model.test_step)`.

    Returns:
        `{metric name: value}` over the whole of `data` (all workers), like
        `model.evaluate(data, return_dict=True)`.
    """
    strategy = strategy or model.distribute_strategy
    _prepare(model, data, strategy)
    return _evaluate(model, data, strategy, _step_function(model, strategy, model.test_step))


def _train_epoch(model, strategy, steps_functions, iterator, steps, validation_data, callback_list):
    """One epoch of `fit_custom_loop`: its steps, then the metrics over all workers (and `val_*` ones)."""
    step, test_step = steps_functions
    _run_steps(
        step,
        iterator,
        steps,
        on_begin=callback_list.on_train_batch_begin,
        on_end=callback_list.on_train_batch_end,
        stop=lambda: model.stop_training,
    )
    epoch_logs = _metric_logs(model)
    if validation_data is not None:
        val_logs = _evaluate(model, validation_data, strategy, test_step)
        epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
    return epoch_logs


def fit_custom_loop(
    model,
    train_data,
    *,
    epochs=1,
    initial_epoch=0,
    steps_per_epoch=None,
    validation_data=None,
    class_weight=None,
    callbacks=(),
    verbose=0,
    shuffle=None,
    strategy=None,
):
    """A stand-in for `model.fit` that works under `MultiWorkerMirroredStrategy` in Keras 3.

    Each step runs the model's own `train_step` (so `LanguageModel`'s sampled softmax, compiled
    losses, metrics, loss scaling and the optimizer all behave as in `fit`) on every replica with
    `strategy.run`, over `train_data` distributed by `distribute_dataset` (global batches). The
    per-step logs are the replicas' mean; the epoch logs (and `val_*` ones) are the metrics read
    across all replicas and workers. Callbacks get the usual `on_train_begin`,
    `on_epoch_begin/end`, `on_train_batch_begin/end` and `on_train_end` calls, and
    `model.stop_training` stops training; under a multi-worker strategy every decision must
    come from these (identical on every worker) logs, or the workers fall out of step.

    Args:
        model: a model compiled under `strategy.scope()`.
        train_data: a `tf.data.Dataset` of global batches `(x, y)`; every worker passes the
            same dataset (same seed), and each keeps its share of every batch.
        epochs, initial_epoch, validation_data, class_weight, callbacks, verbose: as in `fit`.
        steps_per_epoch: as in `fit`: with it, one iteration of `train_data` runs across the
            epochs (e.g. `ShuffledEpochs.epochs`); without it, every epoch iterates `train_data`
            afresh, to its end.
        shuffle: ignored (datasets shuffle themselves), accepted for `fit`'s callers.
        strategy: default: the model's strategy.

    Returns:
        The `keras.callbacks.History` of this call.
    """
    import keras

    strategy = strategy or model.distribute_strategy
    if class_weight:
        train_data = _with_class_weight(train_data, class_weight)
    _prepare(model, train_data, strategy)
    steps = steps_per_epoch or _steps(train_data)
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [*callbacks, history], add_progbar=bool(verbose), verbose=verbose, epochs=epochs, steps=steps, model=model
    )
    step = _step_function(model, strategy, model.train_step)
    test_step = None if validation_data is None else _step_function(model, strategy, model.test_step)
    distributed = distribute_dataset(train_data, strategy)
    model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs = {}
    iterator = None
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        if iterator is None or steps_per_epoch is None:
            iterator = iter(distributed)
        epoch_logs = _train_epoch(model, strategy, (step, test_step), iterator, steps, validation_data, callback_list)
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    if epochs > initial_epoch and isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=epoch_logs)
    return history
