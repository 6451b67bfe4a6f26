"""Gradual unfreezing: a classifier trained stage by stage, its top recurrent layers unfrozen one by one.

`member_stages` says the stages of `finetune.unfreeze`, `stage_learning_rate` each stage's
learning-rate cycle, and `fit_unfreezing_stages` runs them, starting where a `StagePosition`
says; the position is a checkpoint plugin, so a resumed run continues inside the stage where
it stopped, on the same learning-rate cycle.

Example:

```python
stages = member_stages(recipe.finetune, n_layers=2)
fit_unfreezing_stages(classifier, optimizer, stages, train,
                      lambda number, start, steps: stage_learning_rate(recipe.finetune, start, steps, number))
```
"""

import keras
import tensorflow as tf

from tftune import distribute
from tftune.callbacks import Plugin
from tftune.run_setup import log
from tftune.schedules import OneCycle, SlantedTriangular, Stage, unfreezing_stages


def member_stages(settings, n_layers):
    """The unfreezing stages of `finetune.unfreeze`: gradual (head first), or all layers at once."""
    if settings.unfreeze == "gradual":
        return unfreezing_stages(n_layers, settings.stage_epochs, settings.epochs)
    return [Stage(trainable_layers=n_layers, epochs=settings.epochs)]


def stage_learning_rate(settings, start_step, steps, stage=0):
    """The rate of stage number `stage` (from 0): `steps` optimizer steps from optimizer step `start_step`.

    Its peak is `learning_rate / stage_lr_decay ** stage`.
    """
    peak = settings.learning_rate / settings.stage_lr_decay ** stage
    schedule = {"stlr": SlantedTriangular, "one_cycle": OneCycle}.get(settings.schedule)
    if schedule is None:
        return peak
    return schedule(peak, steps, start_step=start_step)


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def describe_plan(stages, settings):
    """One classifier's stages and epochs, and why they add up to more than `finetune.epochs` when they do.

    Example:

    >>> describe_plan(unfreezing_stages(2, stage_epochs=1, total_epochs=4), settings)  # doctest: +SKIP
    '3 stages of 1 + 1 + 2 epochs = 4 epochs (gradual unfreezing: the head first, then one more recurrent layer per stage)'
    """
    lengths = [stage.epochs for stage in stages]
    total = _count(sum(lengths), "epoch")
    if len(stages) == 1:
        return f"1 stage x {total}, every recurrent layer trainable from the start (finetune.unfreeze={settings.unfreeze})"
    shape = (f"{len(stages)} stages x {_count(lengths[0], 'epoch')}" if len(set(lengths)) == 1
             else f"{len(stages)} stages of {' + '.join(map(str, lengths))} epochs")
    why = "gradual unfreezing: the head first, then one more recurrent layer per stage"
    if sum(lengths) > settings.epochs:
        why += (f"; every stage runs finetune.stage_epochs={settings.stage_epochs} (the last at least 1), so "
                f"finetune.epochs={settings.epochs} becomes {sum(lengths)}; --set finetune.unfreeze=all trains "
                "exactly finetune.epochs")
    return f"{shape} = {total} ({why})"


class StagePosition(Plugin):
    """Where a classifier's training is: epochs done, steps done in the next epoch, and the optimizer
    step at which the current stage's learning-rate cycle started (None: at the next stage's start).

    A `tftune.callbacks.Plugin`: the stage's start step is its checkpoint state (`stage_start_step`
    in `state.json`); the epochs and steps done are the checkpoint's own (`resume_at`).
    """

    state_key = "stage_start_step"

    def __init__(self, epochs_done=0, steps_done=0, stage_start_step=None):
        super().__init__()
        self.epochs_done = epochs_done
        self.steps_done = steps_done
        self.stage_start_step = stage_start_step

    def resume_at(self, epochs_done, steps_done):
        """Starts from a checkpoint's epochs and steps done (its stage start step comes with `set_state`)."""
        self.epochs_done, self.steps_done = epochs_done, steps_done

    def get_state(self):
        return self.stage_start_step

    def set_state(self, state):
        self.stage_start_step = state


def fit_unfreezing_stages(classifier, optimizer, stages, train_data, stage_rate, validation_data=None,
                          class_weight=None, callbacks=(), position=None, restore=None, strategy=None, verbose=0):
    """Fits a classifier stage by stage, unfreezing its top recurrent layers as each stage says.

    Each stage sets which of the backbone's recurrent layers train (the top
    `stage.trainable_layers`), compiles (Keras reads trainable flags at compile time), gives the
    optimizer a fresh learning-rate cycle, and fits its epochs. Training stops early when a
    callback sets `stop_training`. Callbacks with a `set_stage(number, trainable_names)` method
    (`StageHistory`) hear of each stage.

    Args:
        classifier: a `TextClassifier`.
        optimizer: its optimizer, built on every variable that will ever train.
        stages: `tftune.schedules.Stage`s, in order.
        train_data: the training batches, a `tftune.batches.ShuffledEpochs` (see `tftune.distribute.fit_from`).
        stage_rate: `(stage number, start step, steps) -> learning rate or schedule` of a stage.
        validation_data, class_weight, callbacks, verbose: as in `fit`.
        position: the `StagePosition` to start from (default: the start); it tracks the stage's start step.
        restore: a callable loading a checkpoint into the compiled classifier, when resuming.
        strategy: the `tf.distribute` strategy (default: the current one).

    Example:

    ```python
    stages = unfreezing_stages(n_layers=2, stage_epochs=1, total_epochs=3)
    fit_unfreezing_stages(classifier, optimizer, stages, train, lambda n, start, steps: SlantedTriangular(
        0.01 / 2.6 ** n, steps, start_step=start))
    ```
    """
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    position = StagePosition() if position is None else position
    steps_per_epoch = train_data.steps_per_epoch
    stage_end = 0
    for number, stage in enumerate(stages):
        stage_begin, stage_end = stage_end, stage_end + stage.epochs
        if position.epochs_done >= stage_end:
            continue  # done before the checkpoint this run resumes from
        trainable = _start_stage(classifier, optimizer, stages, number, (stage_begin, stage_end), restore, position,
                                 stage_rate, steps_per_epoch, strategy)
        restore = None
        for callback in callbacks:
            if hasattr(callback, "set_stage"):
                callback.set_stage(number + 1, sorted(trainable))
        distribute.fit_from(classifier, train_data, position.epochs_done, position.steps_done, stage_end,
                            validation_data=validation_data, class_weight=class_weight, callbacks=list(callbacks),
                            shuffle=False, verbose=verbose)
        position.epochs_done, position.steps_done = stage_end, 0
        if classifier.stop_training:
            break
    if restore is not None:  # every stage had ended before the checkpoint: only its weights are left to take
        with strategy.scope():
            compile_classifier(classifier, optimizer)
            restore(classifier)


def _start_stage(classifier, optimizer, stages, number, epoch_range, restore, position, stage_rate,
                 steps_per_epoch, strategy):
    """Unfreezes stage `number`'s layers, compiles, restores a checkpoint if given, and sets its rate.

    Returns the names of the recurrent layers that train in this stage.
    """
    stage, (stage_begin, stage_end) = stages[number], epoch_range
    layers = classifier.backbone.recurrent_layers
    trainable = [layer.name for layer in layers[len(layers) - stage.trainable_layers :]]
    for layer in layers:
        layer.trainable = layer.name in trainable
    epochs = f"epoch {stage_end}" if stage.epochs == 1 else f"epochs {stage_begin + 1}-{stage_end}"
    log(f"{classifier.name} stage {number + 1}/{len(stages)}, {epochs} of {sum(s.epochs for s in stages)}: "
        "training the head" + (f" and {', '.join(sorted(trainable))}" if trainable else " only"))
    with strategy.scope():
        compile_classifier(classifier, optimizer)
        if restore is not None:
            restore(classifier)
    inside_stage = position.epochs_done > stage_begin or position.steps_done > 0
    if restore is None or not inside_stage or position.stage_start_step is None:
        position.stage_start_step = int(optimizer.iterations.numpy())
    optimizer.learning_rate = stage_rate(number, position.stage_start_step, stage.epochs * steps_per_epoch)
    return trainable


def compile_classifier(classifier, optimizer):
    """Compiles a classifier for its next stage (Keras reads the trainable flags when it compiles)."""
    classifier.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
