"""A training run's setup, shared by pretraining and fine-tuning: logging, precision, distribution, checkpoints.

`tftune.pretraining` and `tftune.finetuning` run their stages with these. Both train under the
recipe's `[distribute]` strategy (see `tftune.distribute`): one device, `mirrored` over local
devices, or `multi-worker` over several processes, where only the chief writes the run.

Example:

>>> from tftune.run_setup import resolve_policy
>>> resolve_policy("float32")
'float32'
"""

import contextlib
import contextvars
import dataclasses
import logging
import shutil
import sys

import keras
import tensorflow as tf

from tftune import distribute
from tftune.checkpoints import check_resumable
from tftune.errors import RunError, TrainingError
from tftune.model_configs import ENCODER_DROPOUT_KEYS
from tftune.replicas import check_global_batch
from tftune.runs import check_vector_size

logger = logging.getLogger(__name__)


def log(message):
    """A progress line through the `tftune` logger (the CLI shows INFO lines on stderr as `tftune: ...`)."""
    logger.info(message)


# Keras' `verbose` for the `fit` calls of this context (the Python API's `verbose=`); None: by the terminal.
FIT_VERBOSITY = contextvars.ContextVar("fit_verbosity", default=None)


def fit_verbosity():
    """`FIT_VERBOSITY` when set, else a live progress bar on a terminal and one line per epoch in logs."""
    chosen = FIT_VERBOSITY.get()
    if chosen is not None and chosen != "auto":
        return chosen
    return 1 if sys.stdout.isatty() else 2


# === Precision ===


def resolve_policy(name):
    """`auto` is `mixed_float16` when a GPU is visible, else `float32`."""
    if name == "auto":
        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    return name


def set_precision(name):
    """Sets Keras' global dtype policy for the models built next; returns the policy used.

    `pretrain` and `finetune` put the caller's policy back when they return (`global_policy_restored`).
    """
    policy = resolve_policy(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def log_setup(strategy, policy, backbone):
    """Logs the strategy, the precision policy and whether each recurrent layer can use cuDNN."""
    from tftune.models import cudnn_report

    log(distribute.describe(strategy))
    log(f"precision policy: {policy}")
    for line in cudnn_report(backbone):
        log(line)


# === Runs read ===


def check_encoder_matches(recipe, pretrained):
    """The recipe must describe the same encoder and vocabulary as the pretrain run it starts from."""
    for section in ("encoder", "vocab"):
        for key, value in dataclasses.asdict(getattr(pretrained.recipe, section)).items():
            if key in ENCODER_DROPOUT_KEYS or (section, key) == ("vocab", "open"):
                continue
            if recipe.get(f"{section}.{key}") != value:
                raise RunError(
                    f"{section}.{key} is {recipe.get(f'{section}.{key}')!r} in the recipe but {value!r} in the "
                    f"pretrain run {pretrained.path}; fine-tuning reuses the pretrained encoder"
                )
    check_vector_size(recipe, pretrained)


# === Distribution and checkpoints ===


RESUME_HINT = "the same command and --resume"


def start_distribution(recipe, strategy, resume, batch_key):
    """The strategy to train under: `strategy`, else the one the recipe's `[distribute]` asks for.

    Checks that the global batch (`batch_key`, e.g. `"pretrain.batch_size"`) covers the replicas,
    and rejects `resume` under multi-worker training. The training functions log the strategy
    once their inputs are read, so that a bad input stays a one-line error.
    """
    if strategy is None:
        strategy = distribute.recipe_strategy(recipe)
    if resume and distribute.is_multi_worker(strategy):
        raise RunError(distribute.MULTI_WORKER_RESUME)
    check_global_batch(recipe.get(batch_key), strategy, batch_key)
    return strategy


@contextlib.contextmanager
def worker_failures(strategy):
    """Under multi-worker training, a worker that fails or stops (its own error says why) makes the
    others' collectives fail: that becomes one line, not an internal error."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as e:
        if not distribute.is_multi_worker(strategy):
            raise
        text = str(e).split("aborted by:")[-1].strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".")[:200] if text else type(e).__name__
        raise TrainingError(
            f"another worker of the multi-worker cluster failed or stopped (its own error says why): {reason}; "
            "nothing was written"
        ) from None


def distribution_summary(strategy):
    """What `metrics.json` records of the strategy a run trained under."""
    return {
        "strategy": distribute.strategy_kind(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "workers": distribute.num_workers(strategy),
    }


def chief_verbosity(strategy):
    """Keras' progress output on the chief; the other workers train silently."""
    return fit_verbosity() if distribute.is_chief(strategy) else 0


def log_written(kind, out, strategy):
    if distribute.is_chief(strategy):
        log(f"{kind} run written to {out}")
    else:
        log(f"worker {distribute.worker_index(strategy)}: done; the chief wrote the {kind} run")


def check_same_data(data, resumed):
    """The fingerprints of the run's data (`tftune.inputs`); a resumed run refuses other data than its
    checkpoint's, in one line naming the input."""
    fingerprints = data.fingerprints()
    if resumed is not None and resumed.get("inputs") is not None:  # older checkpoints held their data in the recipe
        data.check_unchanged(resumed["inputs"], fingerprints)
    return fingerprints


def open_checkpoint(checkpoint, kind, recipe, resume, force, **expected):
    """The saved state to resume from, or None for a fresh start.

    A fresh start over a leftover checkpoint needs `force` (it is then discarded), so an
    interrupted run is never thrown away by accident.
    """
    if resume:
        state = check_resumable(checkpoint, kind, recipe)
        for key, value in expected.items():
            value = value if value is None or isinstance(value, (str, list)) else str(value)
            if state.get(key) != value:
                raise RunError(f"{checkpoint.path}: written with {key} = {state.get(key)!r}, not {value!r}")
        return state
    if checkpoint.exists():
        if not force:
            raise RunError(
                f"{checkpoint.out}: an interrupted run left a checkpoint ({checkpoint.path}); "
                "pass --resume to continue it, or --force to start over"
            )
        checkpoint.remove()
    # Logs of an earlier attempt that never reached a checkpoint: this run starts its curves afresh.
    shutil.rmtree(checkpoint.logs, ignore_errors=True)
    return None


