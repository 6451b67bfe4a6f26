"""Keras callbacks the benchmarks use to time training and to stop it at a wall-clock budget.

Example:

```python
budget, timer = WallClockBudget(300), StepTimer()
model.fit(x, y, epochs=1000, callbacks=[budget, timer])
timer.steps_per_second, budget.steps
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


class StepTimer(keras.callbacks.Callback):
    """Time of the training steps, leaving out the first one (tracing); measured like tftune's `Throughput`."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self.steps = 0
        self._first_step_done = False

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not self._first_step_done:
            self._first_step_done = True
            return
        self.seconds += time.perf_counter() - self._start
        self.steps += 1

    @property
    def steps_per_second(self):
        return self.steps / self.seconds if self.seconds else None
