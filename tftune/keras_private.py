"""Every private Keras API tftune relies on, in one place.

Keras 3 keeps a few hooks that tftune needs outside its public API. Each one is called or
overridden here and nowhere else, and `tests/test_keras_private.py` checks each against the
installed Keras, so an upgrade that changes one fails there, by name, rather than deep inside a
training run.

| private API | what tftune needs it for | here |
| --- | --- | --- |
| `Optimizer._get_variable_index` | a variable's slot in `update_step` (discriminative rates) | `optimizer_variable_index` |
| `Optimizer._clip_gradients`, `Optimizer._all_reduce_sum_gradients` | clipping the gradients summed over the replicas | `ClipAfterAllReduce` |
| `Model._symbolic_build` | building a model, its metrics and optimizer from a dataset's `element_spec` | `symbolic_build` |
| `saving_lib.save_weights_only`, `saving_lib.load_weights_only` (`objects_to_skip`) | a task's weights without its backbone's (keras-hub's `task.weights.h5`) | `save_weights_skipping`, `load_weights_skipping` |
| `RNN.inner_loop` | handing the weight-dropped recurrent kernel to Keras' (cuDNN) recurrence | `WeightDroppedInnerLoop` |

Checked on Keras 3.15. TensorFlow and Keras are imported when first used, so `tftune.distribute`
stays cheap to import.

Example:

```python
index = optimizer_variable_index(optimizer, variable)  # inside an optimizer's update_step
symbolic_build(model, dataset.element_spec)             # before a custom training loop
```
"""


def optimizer_variable_index(optimizer, variable) -> int:
    """The position of `variable` in the list `optimizer` was built with.

    Inside `update_step` Keras passes the backend variable, which has no `.path` on the
    TensorFlow backend; this index is the only link back to the `keras.Variable`.
    """
    return optimizer._get_variable_index(variable)


def symbolic_build(model, element_spec) -> None:
    """Builds `model`, its compiled loss and metrics and its optimizer from a dataset's
    `element_spec`, as `fit` and `evaluate` do before they trace a step, without drawing a batch.

    Call it inside the strategy's scope.
    """
    model._symbolic_build(data_batch=element_spec)


def save_weights_skipping(model, path, skip) -> None:
    """`model.save_weights(path)` without the weights of the objects in `skip` (e.g. its backbone).

    keras-hub writes a preset's `task.weights.h5` so; `load_weights_skipping` reads it back.
    """
    from keras.src.saving import saving_lib

    saving_lib.save_weights_only(model, str(path), objects_to_skip=list(skip))


def load_weights_skipping(model, path, skip) -> None:
    """`model.load_weights(path)` leaving the objects in `skip` (e.g. its loaded backbone) as they are.

    The file may hold their weights or not: they are neither read nor required.
    """
    from keras.src.saving import saving_lib

    saving_lib.load_weights_only(model, str(path), objects_to_skip=list(skip))


def _in_multi_replica_context() -> bool:
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return False
    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync > 1


class ClipAfterAllReduce:
    """Optimizer mixin: clip the gradients summed over the replicas, as on one device.

    Keras 3 clips (`clipnorm`, `global_clipnorm`, `clipvalue`) each replica's gradients in
    `_clip_gradients` and only then sums them over the replicas in `_all_reduce_sum_gradients`,
    so under a strategy a clipped step is not the single-device one (each replica's share is
    clipped on its own). With this mixin the sum over the replicas happens first, then the
    clipping, and the later sum is skipped. Without clipping, or outside a multi-replica step,
    nothing changes.

    Use it through `tftune.replicas.clip_after_all_reduce(keras.optimizers.Adam)`.
    """

    def _clips(self):
        return any(value and value > 0 for value in (self.clipnorm, self.global_clipnorm, self.clipvalue))

    def _clip_gradients(self, grads):
        if self._clips() and _in_multi_replica_context():
            import tensorflow as tf

            present = [g for g in grads if g is not None]
            summed = iter(tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, present))
            grads = [None if g is None else next(summed) for g in grads]
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        if self._clips() and _in_multi_replica_context():
            return list(grads_and_vars)  # already summed in _clip_gradients
        return super()._all_reduce_sum_gradients(grads_and_vars)


class WeightDroppedInnerLoop:
    """RNN layer mixin: Keras' own recurrence (cuDNN where it runs) with this call's recurrent kernel.

    `inner_loop` is the undocumented hook through which `keras.layers.RNN.call` runs its
    recurrence. LSTM's and GRU's hand `self.cell.recurrent_kernel` to `backend.lstm` /
    `backend.gru` (cuDNN), or else run the cell, which reads it step by step. Both read the
    variable, and inside `keras.StatelessScope` a read returns the mapped value: the dropped
    kernel reaches cuDNN as it is, and gradients flow through the mask to the variable.

    The layer provides `recurrent_kernel_for_call(training)` (see `tftune.fast_rnn`).
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        import keras

        kernel = self.recurrent_kernel_for_call(training)
        if kernel is self.cell.recurrent_kernel:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        with keras.StatelessScope([(self.cell.recurrent_kernel, kernel)]):
            return super().inner_loop(sequences, initial_state, mask, training=training)
