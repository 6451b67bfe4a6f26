"""ULMFiT training schedules: slanted triangular (or one-cycle) learning rates,
discriminative learning rates per layer, and gradual unfreezing stages."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
from keras import ops

from tftune.keras_private import optimizer_variable_index


class _Cycle(keras.optimizers.schedules.LearningRateSchedule):
    """What the cyclic schedules share: a peak rate, a length, and the step the cycle starts at."""

    def __init__(self, max_lr, total_steps, start_step, name):
        if not max_lr > 0:
            raise ValueError(f"max_lr must be > 0, got {max_lr!r}")
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        if int(start_step) != start_step or start_step < 0:
            raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.name = name

    def _position(self, step):
        """Steps into the cycle, as float32, held at the cycle's end once it is over."""
        return ops.clip(ops.cast(step, "float32") - float(self.start_step), 0.0, float(self.total_steps))


@keras.saving.register_keras_serializable(package="tftune")
class SlantedTriangular(_Cycle):
    """Slanted triangular learning rate (Howard & Ruder, 2018, ULMFiT).

    The rate climbs linearly from `max_lr / ratio` to `max_lr` during the
    first `cut = floor(total_steps * cut_frac)` steps, then falls linearly
    back to `max_lr / ratio` at `total_steps`, and stays there afterwards.
    The fall spans `total_steps - cut` steps, which is the paper's
    `cut * (1 / cut_frac - 1)` whenever `total_steps * cut_frac` is whole and
    keeps the rate positive when it is not. With `cut == 0` (very short runs)
    there is no climb: the rate starts at `max_lr`. Steps count from
    `start_step`, so an optimizer that keeps its state (and step counter)
    across gradual-unfreezing stages can start a fresh cycle in each stage.

    Args:
        max_lr: Peak learning rate, reached at step `cut`.
        total_steps: Number of optimizer steps in the whole run (>= 1).
        cut_frac: Share of the steps spent climbing, in (0, 1).
        ratio: How much smaller the lowest rate is than `max_lr` (>= 1).
        start_step: The optimizer step at which the cycle starts (>= 0).
        name: Optional name of the schedule.

    Example:

    ```python
    schedule = SlantedTriangular(max_lr=0.004, total_steps=1000)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    ```
    """

    def __init__(self, max_lr, total_steps, cut_frac=0.1, ratio=32.0, start_step=0, name=None):
        super().__init__(max_lr, total_steps, start_step, name)
        if not 0 < cut_frac < 1:
            raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac!r}")
        if not ratio >= 1:
            raise ValueError(f"ratio must be >= 1, got {ratio!r}")
        self.cut_frac = float(cut_frac)
        self.ratio = float(ratio)
        self.cut = math.floor(self.total_steps * self.cut_frac)

    def __call__(self, step):
        t = self._position(step)  # past the end of the run the rate keeps its final value
        falling = 1.0 - (t - self.cut) / float(self.total_steps - self.cut)
        if self.cut > 0:
            climbing = t / float(self.cut)
            p = ops.where(t < self.cut, climbing, falling)
        else:
            p = falling
        p = ops.clip(p, 0.0, 1.0)
        return self.max_lr * (1.0 + p * (self.ratio - 1.0)) / self.ratio

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "cut_frac": self.cut_frac,
            "ratio": self.ratio,
            "start_step": self.start_step,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="tftune")
class OneCycle(_Cycle):
    """One-cycle learning rate (Smith, 2018, as in fastai's `fit_one_cycle`).

    The rate rises from `max_lr / div_factor` to `max_lr` along half a cosine during the
    first `pct_start` of the steps, then falls along half a cosine to
    `max_lr / (div_factor * final_div_factor)` at `total_steps`, and stays there. Steps count
    from `start_step`, as in `SlantedTriangular`.

    Args:
        max_lr: Peak learning rate.
        total_steps: Number of optimizer steps of the cycle (>= 1).
        pct_start: Share of the steps spent rising, in (0, 1).
        div_factor: The first rate is `max_lr / div_factor` (>= 1).
        final_div_factor: The last rate is `max_lr / (div_factor * final_div_factor)` (>= 1).
        start_step: The optimizer step at which the cycle starts (>= 0).
        name: Optional name of the schedule.

    Example:

    ```python
    optimizer = keras.optimizers.Adam(learning_rate=OneCycle(max_lr=0.004, total_steps=1000))
    ```
    """

    def __init__(self, max_lr, total_steps, pct_start=0.25, div_factor=25.0, final_div_factor=1e4, start_step=0,
                 name=None):
        super().__init__(max_lr, total_steps, start_step, name)
        if not 0 < pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        if not (div_factor >= 1 and final_div_factor >= 1):
            raise ValueError(f"div_factor and final_div_factor must be >= 1, got {div_factor!r}, {final_div_factor!r}")
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)

    def __call__(self, step):
        t = self._position(step)
        rise_steps = max(1.0, self.pct_start * self.total_steps)
        fall_steps = max(1.0, self.total_steps - rise_steps)
        first = self.max_lr / self.div_factor
        last = first / self.final_div_factor

        def cosine(start, end, fraction):
            return end + (start - end) / 2.0 * (1.0 + ops.cos(math.pi * ops.clip(fraction, 0.0, 1.0)))

        rising = cosine(first, self.max_lr, t / rise_steps)
        falling = cosine(self.max_lr, last, (t - rise_steps) / fall_steps)
        return ops.where(t < rise_steps, rising, falling)

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "start_step": self.start_step,
            "name": self.name,
        }


def _prefix_matches(prefix: str, path: str) -> bool:
    # Compare whole path segments so "rnn_1" does not also match "rnn_10/...".
    stem = prefix.rstrip("/")
    return path == stem or path.startswith(stem + "/")


class DiscriminativeRates:
    """Mixin for a Keras optimizer: one learning rate multiplier per group of variables.

    Each variable's step uses `learning_rate * multiplier`, where the
    multiplier belongs to the longest prefix in `multipliers` that matches
    the variable's `path` segment by segment (`"encoder/rnn_2"` and
    `"encoder/rnn_2/"` both match `"encoder/rnn_2/lstm_cell/kernel"`, not
    `"encoder/rnn_20/..."`). Variables matching no prefix use 1.0; a
    multiplier of 0 leaves a variable exactly unchanged.

    The rate itself is scaled, not the gradient: for Adam-style optimizers a
    scaled gradient would cancel out in `m / sqrt(v)`.

    Keras only updates variables the optimizer was built with, so with
    gradual unfreezing build it on every variable that will ever train
    (`optimizer.build(model.trainable_variables)` while all layers are
    trainable) before freezing layers for the first stage.

    Args:
        multipliers: Dict mapping variable path prefixes to multipliers.
        *args, **kwargs: The optimizer's own arguments (`learning_rate`, a
            float or a `LearningRateSchedule`, is the rate of variables whose
            multiplier is 1.0).
    """

    def __init__(self, *args, multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        multipliers = dict(multipliers or {})
        for prefix, value in multipliers.items():
            if not isinstance(prefix, str) or not prefix.strip("/"):
                raise ValueError(f"multiplier prefixes must be non-empty strings, got {prefix!r}")
            if not float(value) >= 0:
                raise ValueError(f"multiplier of {prefix!r} must be >= 0, got {value!r}")
        # A tuple of pairs, not a dict: the optimizer's tracker would wrap a dict.
        self._prefix_multipliers = tuple((str(k), float(v)) for k, v in multipliers.items())
        self._variable_multipliers = ()

    @property
    def multipliers(self) -> dict[str, float]:
        """The prefix -> multiplier mapping the optimizer was created with."""
        return dict(self._prefix_multipliers)

    def multiplier_for(self, path: str) -> float:
        """Returns the multiplier used for a variable with this `path`."""
        matching = [(prefix.rstrip("/"), value) for prefix, value in self._prefix_multipliers
                    if _prefix_matches(prefix, path)]
        if not matching:
            return 1.0
        return max(matching, key=lambda item: len(item[0]))[1]

    def build(self, var_list):
        if self.built:
            return
        # update_step only sees raw backend variables (no `.path` on the TF
        # backend), so resolve multipliers now, in the optimizer's index order.
        self._variable_multipliers = tuple(self.multiplier_for(v.path) for v in var_list)
        super().build(var_list)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._variable_multipliers[optimizer_variable_index(self, variable)]
        super().update_step(gradient, variable, learning_rate * multiplier)

    def get_config(self):
        config = super().get_config()
        config["multipliers"] = self.multipliers
        return config


@keras.saving.register_keras_serializable(package="tftune")
class DiscriminativeAdam(DiscriminativeRates, keras.optimizers.Adam):
    """Adam with discriminative learning rates (see `DiscriminativeRates`); tftune's fine-tuning optimizer.

    Example:

    ```python
    optimizer = DiscriminativeAdam(
        learning_rate=SlantedTriangular(max_lr=0.004, total_steps=500),
        multipliers=discriminative_multipliers(["encoder/rnn_1", "encoder/rnn_2"]),
    )
    ```
    """


@keras.saving.register_keras_serializable(package="tftune")
class DiscriminativeSGD(DiscriminativeRates, keras.optimizers.SGD):
    """SGD (with optional momentum) with discriminative learning rates (see `DiscriminativeRates`).

    Example:

    ```python
    optimizer = DiscriminativeSGD(learning_rate=0.1, momentum=0.9,
                                  multipliers={"encoder/rnn_1": 0.25, "encoder/rnn_2": 0.5})
    ```
    """


def discriminative_multipliers(layer_names: Sequence[str], factor: float = 2.6) -> dict[str, float]:
    """Learning rate multipliers that shrink by `factor` per layer downwards.

    Args:
        layer_names: Layer names or variable path prefixes, bottom layer first.
        factor: Ratio between the rates of neighbouring layers (ULMFiT: 2.6).

    Returns:
        Dict mapping each name to `factor ** -depth`, where the top layer has
        depth 0 (multiplier 1.0).

    Example:

    ```python
    discriminative_multipliers(["rnn_1", "rnn_2"])  # {"rnn_1": 1/2.6, "rnn_2": 1.0}
    ```
    """
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    names = list(layer_names)
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be distinct, got {names!r}")
    top = len(names) - 1
    return {name: float(factor) ** -(top - index) for index, name in enumerate(names)}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of gradual unfreezing.

    Attributes:
        trainable_layers: How many of the top recurrent layers train
            (0 = only the classifier head).
        epochs: Number of epochs of this stage.
    """

    trainable_layers: int
    epochs: int


def unfreezing_stages(n_layers: int, stage_epochs: int, total_epochs: int) -> list[Stage]:
    """ULMFiT gradual unfreezing: head first, then one more layer per stage.

    Stage k trains the top k recurrent layers plus the head, for
    `stage_epochs` epochs; the last stage trains everything for the remaining
    epochs, and for at least one epoch even when the earlier stages already
    use up `total_epochs`.

    Args:
        n_layers: Number of recurrent layers (>= 1).
        stage_epochs: Epochs of every stage but the last (>= 1).
        total_epochs: Epochs of the whole run.

    Returns:
        `n_layers + 1` stages, with `trainable_layers` 0, 1, ..., n_layers.

    Example:

    ```python
    unfreezing_stages(2, stage_epochs=1, total_epochs=4)
    # [Stage(0, 1), Stage(1, 1), Stage(2, 2)]
    ```
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers!r}")
    if stage_epochs < 1:
        raise ValueError(f"stage_epochs must be >= 1, got {stage_epochs!r}")
    stages = [Stage(trainable_layers=k, epochs=stage_epochs) for k in range(n_layers)]
    remaining = max(1, total_epochs - n_layers * stage_epochs)
    stages.append(Stage(trainable_layers=n_layers, epochs=remaining))
    return stages
