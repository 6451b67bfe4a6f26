"""Keras callbacks the benchmarks use to stop training at a wall-clock budget (step timing is
`tftune.callbacks.Throughput`).

Example:

```python
budget = WallClockBudget(300)
model.fit(x, y, epochs=1000, callbacks=[budget])
budget.steps
```
"""

import time

import keras


class WallClockBudget(keras.callbacks.Callback):
    """Stops training once `seconds` have passed since training began (checked after every step).

    The clock starts with `fit`, so tracing and validation at the end of an epoch inside the
    budget count against it, as they would in any real run. `steps` is the number of training
    steps taken.

    Args:
        seconds: the training budget.
        min_steps: steps to take even past the budget, so that a step time can always be
            measured (the first step, which traces the model, is never timed).
    """

    def __init__(self, seconds, min_steps=3):
        super().__init__()
        self.seconds = seconds
        self.min_steps = min_steps
        self.steps = 0
        self.epochs = 0
        self.elapsed = None

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.min_steps and time.perf_counter() - self._started >= self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1

    def on_train_end(self, logs=None):
        self.elapsed = time.perf_counter() - self._started
