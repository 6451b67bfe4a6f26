"""Data-parallel training with `tf.distribute`: strategy selection, chief-only writes, and fixes.

`distribute.strategy` (`--distribute`) picks one of:

- `none`: TensorFlow's default strategy (one device, what tftune always did);
- `mirrored`: `tf.distribute.MirroredStrategy` over the local GPUs, or over the given devices
  (e.g. two logical CPUs made by `configure_logical_cpus`, for tests and demos);
- `multi-worker`: `tf.distribute.MultiWorkerMirroredStrategy`, one process per worker, each
  started with its own `TF_CONFIG` (cluster and task). It must be created before TensorFlow does
  anything else in the process (before any tensor, model or dataset).

The recipe's batch size is the global batch: each step splits it over the replicas and sums
their gradients of the per-replica loss divided by the number of replicas, so the update is the
single-device one and the learning rate needs no scaling.

What was found on TensorFlow 2.21 / Keras 3.15 (see `tests/test_distribute.py`):

- `model.fit` under `MirroredStrategy` trains tftune's models (full and tied `LanguageModel`, the
  `tftune.fast_rnn` layers with their custom gradient, `DiscriminativeAdam` with its
  per-variable multipliers, the classifier re-compiled per unfreezing stage, class weights)
  with the same losses and weights as one device, up to float rounding, on unshuffled data and
  over several epochs of shuffled training batches (`tftune.batches.ShuffledEpochs`).
- Under a strategy, Keras' `fit` first pulls a batch from a fresh iteration of the data to build
  the model (`_maybe_symbolic_build`), and without `steps_per_epoch` it iterates the data afresh
  every epoch. That once shifted the order of datasets that reshuffled on every iteration.
  tftune's training batches (`ShuffledEpochs`) draw each epoch in an order that depends on the
  seed and the epoch alone, and every iteration starts at the same epoch, so extra iterations
  change nothing: `fit` here calls Keras' `fit` on one device and under `MirroredStrategy` alike
  (`fit_from` gives it the epochs back to back and `steps_per_epoch`, so
  that one iterator runs across them).
- Two `MirroredStrategy` objects over the same devices in one process number their collectives
  alike; training under the second after the first fails with a collective "shape mismatch".
  `make_strategy` returns one strategy per set of devices.
- Keras clips gradients (`clipnorm`, `global_clipnorm`, `clipvalue`) on each replica *before*
  summing them over the replicas, so a clipped optimizer takes a different step than on one
  device. `clip_after_all_reduce(keras.optimizers.Adam)` sums first.
- A custom `train_step` that differentiates a plain mean loss (the sampled softmax of
  `LanguageModel`) must divide it by the number of replicas (`scale_loss_for_replicas`), as
  Keras' own losses do; otherwise the replicas' gradients add up to N times the step.
- `model.fit` and `model.evaluate` fail under `MultiWorkerMirroredStrategy` in Keras 3
  (keras#20585): there `fit` and `evaluate` here switch to `tftune.multi_worker_loop`.
- Keras 3 `Dropout` draws the same mask on every replica (one seed state for all): the noise
  is correlated across replicas, though each replica applies it to other examples.

Example:

>>> from tftune.distribute import make_strategy
>>> strategy = make_strategy("none")
>>> strategy.num_replicas_in_sync
1
"""

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tftune.errors import RecipeError, RunError
from tftune import multi_worker_loop
from tftune.replicas import current_strategy

STRATEGIES = ("none", "mirrored", "multi-worker")
TASK_TYPES = ("chief", "worker", "evaluator", "ps")
# The workers other than the chief write no checkpoint, so none of them could resume.
MULTI_WORKER_RESUME = (
    "--resume cannot continue a multi-worker run (only the chief has its checkpoint); resume it on the "
    "chief's machine with --distribute none or mirrored, or start over with --force"
)


def _tf():
    import tensorflow as tf

    return tf


# === Devices ===


def configure_logical_cpus(n):
    """Splits the (first) physical CPU into `n` logical devices `/cpu:0` ... `/cpu:{n-1}`.

    For tests and CPU demos of `MirroredStrategy`. Must run before TensorFlow initializes its
    devices, i.e. before any tensor, model, dataset or strategy exists in the process; calling it
    again with the same `n` is a no-op.

    Args:
        n: number of logical CPU devices (>= 1).

    Returns:
        The names of the logical CPU devices.
    """
    tf = _tf()
    if int(n) != n or n < 1:
        raise RecipeError(f"the number of logical CPUs must be an int >= 1, got {n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(int(n))]
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        current = tf.config.get_logical_device_configuration(cpu)
        if current is not None and len(current) == n:
            return [device.name for device in tf.config.list_logical_devices("CPU")]
        have = len(tf.config.list_logical_devices("CPU"))
        raise RunError(
            f"cannot split the CPU into {n} logical devices: TensorFlow already initialized its devices "
            f"({have} CPU device(s)); call configure_logical_cpus before any other TensorFlow work in the process"
        ) from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


# === TF_CONFIG ===


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed `TF_CONFIG` of one multi-worker process.

    Attributes:
        cluster: task type -> list of `host:port` addresses.
        task_type: this process's task type (`"chief"` or `"worker"` for training).
        task_index: this process's index within its task type.
    """

    cluster: dict
    task_type: str
    task_index: int

    @property
    def num_workers(self):
        """Training processes: the chief (if any) and the workers."""
        return len(self.cluster.get("chief", ())) + len(self.cluster.get("worker", ()))

    @property
    def worker_index(self):
        """Place among the training processes: the chief first, then the workers."""
        if self.task_type == "chief":
            return 0
        return self.task_index + len(self.cluster.get("chief", ()))

    @property
    def is_chief(self):
        """The chief task, or worker 0 when the cluster has no chief (Keras' rule)."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and not self.cluster.get("chief")
        )


def read_tf_config(environ=None):
    """Parses and checks `TF_CONFIG` from `environ` (default: `os.environ`).

    Returns:
        A `ClusterConfig`, or None when `TF_CONFIG` is unset or empty.

    Raises:
        RunError: `TF_CONFIG` is not JSON, or lacks a usable `cluster` or `task`.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    where = "TF_CONFIG"
    try:
        config = json.loads(text)
    except ValueError as e:
        raise RunError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise RunError(f"{where}: expected a JSON object with 'cluster' and 'task', got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise RunError(f"{where}: 'cluster' must map task types to lists of host:port addresses")
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise RunError(
                f"{where}: unknown task type {task_type!r} in 'cluster'; expected one of {', '.join(TASK_TYPES)}"
            )
        if isinstance(addresses, str):
            addresses = [addresses]
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise RunError(f"{where}: cluster[{task_type!r}] must be a non-empty list of 'host:port' strings")
        cluster[task_type] = list(addresses)
    if len(cluster.get("chief", ())) > 1:
        raise RunError(f"{where}: a cluster has at most one chief, got {len(cluster['chief'])}")
    if not cluster.get("chief") and not cluster.get("worker"):
        raise RunError(f"{where}: the cluster has no 'chief' or 'worker' task to train")
    if not isinstance(task, dict):
        raise RunError(f"{where}: 'task' must be an object like {{\"type\": \"worker\", \"index\": 0}}")
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise RunError(f"{where}: task type {task_type!r} is not in the cluster ({', '.join(sorted(cluster))})")
    if isinstance(task_index, bool) or not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        raise RunError(
            f"{where}: task index {task_index!r} is out of range for the {len(cluster[task_type])} "
            f"{task_type} address(es)"
        )
    if task_type not in ("chief", "worker"):
        raise RunError(f"{where}: task type {task_type!r} does not train with the multi-worker strategy")
    return ClusterConfig(cluster, task_type, task_index)


def _is_address(value):
    if not isinstance(value, str) or ":" not in value:
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit()


# === Strategies ===


def make_strategy(name, devices=None):
    """The `tf.distribute` strategy that `distribute.strategy = name` asks for.

    Args:
        name: `"none"`, `"mirrored"` or `"multi-worker"`.
        devices: for `"mirrored"` only: device names (e.g. `["/gpu:0", "/gpu:1"]` or
            `["/cpu:0", "/cpu:1"]`); default: all local GPUs, or the CPU when there is none.

    Returns:
        A `tf.distribute.Strategy`; for `"none"`, `tf.distribute.get_strategy()` (the default).
        A process makes one mirrored strategy per set of devices and returns it again when asked
        again: two `MirroredStrategy` objects over the same devices number their collectives
        alike (TensorFlow starts every one's keys at 1), so training under the second after the
        first (e.g. `pretrain` then `finetune` in one process) fails with a collective "shape
        mismatch".

    Raises:
        RecipeError: an unknown name, or devices that do not exist or do not apply.
        RunError: `TF_CONFIG` is missing or malformed for `"multi-worker"`, or the strategy was
            created too late in the process.
    """
    tf = _tf()
    if name not in STRATEGIES:
        raise RecipeError(f"distribute.strategy: unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    devices = list(devices or ())
    if name == "none":
        if devices:
            raise RecipeError('distribute.devices: only used with distribute.strategy = "mirrored"')
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored_strategy(devices)
    if devices:
        raise RecipeError(
            'distribute.devices: not used with "multi-worker"; each worker uses its local devices '
            "(CUDA_VISIBLE_DEVICES picks them)"
        )
    return _multi_worker_strategy()


def _mirrored_strategy(devices):
    """The process's `MirroredStrategy` over `devices` (checked), or over every GPU (else the CPU)."""
    tf = _tf()
    if devices:
        available = {_canonical_device(d.name) for d in tf.config.list_logical_devices()}
        unknown = [d for d in devices if _canonical_device(d) not in available]
        if unknown:
            raise RecipeError(
                f"distribute.devices: no such device {', '.join(map(repr, unknown))}; this machine has "
                f"{', '.join(sorted(available))}"
            )
        if len({_canonical_device(d) for d in devices}) != len(devices):
            raise RecipeError(f"distribute.devices: a device is listed twice in {devices}")
    # MirroredStrategy(None) takes every GPU, else the CPU: the same devices, the same strategy.
    default = [d.name for d in tf.config.list_logical_devices("GPU")] or ["/cpu:0"]
    key = ("mirrored", tuple(sorted(_canonical_device(d) for d in devices or default)))
    if key not in _MIRRORED:
        _MIRRORED[key] = tf.distribute.MirroredStrategy(devices or None)
    return _MIRRORED[key]


def _multi_worker_strategy():
    """The process's `MultiWorkerMirroredStrategy`, joined once, from `TF_CONFIG`."""
    tf = _tf()
    if read_tf_config() is None:
        raise RunError(
            'distribute.strategy = "multi-worker" needs the TF_CONFIG environment variable, e.g. '
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    key = ("multi-worker", ())
    if key in _MIRRORED:
        return _MIRRORED[key]  # one per process: the cluster is joined once
    try:
        _MIRRORED[key] = tf.distribute.MultiWorkerMirroredStrategy()
        return _MIRRORED[key]
    except (RuntimeError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(
            "could not start the multi-worker strategy (it must be created before any other "
            f"TensorFlow work in the process): {message}"
        ) from None


def parse_devices(text):
    """The device names of a `distribute.devices` value: comma-separated, blanks ignored."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def recipe_strategy(recipe):
    """The strategy that a recipe's `[distribute]` section asks for (see `make_strategy`)."""
    settings = recipe.distribute
    return make_strategy(settings.strategy, parse_devices(settings.devices))


def describe(strategy):
    """One line for the log: the strategy, its replicas and (multi-worker) this process's place."""
    kind = strategy_kind(strategy)
    replicas = strategy.num_replicas_in_sync
    if kind == "none":
        return "distribute: none (one device)"
    text = f"distribute: {kind} on {replicas} replica(s)"
    if kind == "mirrored":
        return text + f" ({', '.join(strategy.extended.worker_devices)})"
    role = "chief" if is_chief(strategy) else "worker"
    return text + f", {num_workers(strategy)} worker(s); this process is worker {worker_index(strategy)} ({role})"


_MIRRORED = {}  # (name, devices) -> the process's (multi-worker) mirrored strategy over them (see make_strategy)


def _canonical_device(name):
    """`/cpu:0`, `CPU:0` and `/job:localhost/replica:0/task:0/device:CPU:0` all become `CPU:0`."""
    last = name.split("/")[-1]
    if last.lower().startswith("device:"):
        last = last[len("device:") :]
    kind, _, index = last.rpartition(":")
    return f"{kind.upper()}:{index}"


def strategy_kind(strategy):
    """`"none"`, `"mirrored"` or `"multi-worker"` for a strategy made by `make_strategy`."""
    tf = _tf()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi-worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "none"


def is_multi_worker(strategy):
    return strategy_kind(strategy) == "multi-worker"


def cluster_config(strategy=None):
    """This process's `ClusterConfig` under a multi-worker strategy, else None.

    Args:
        strategy: a strategy (default: the current one), or a `ClusterConfig`, returned as is.
    """
    if isinstance(strategy, ClusterConfig):
        return strategy
    strategy = current_strategy(strategy)
    if not is_multi_worker(strategy):
        return None
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return None  # a multi-worker strategy without TF_CONFIG: one local worker
    return ClusterConfig(resolver.cluster_spec().as_dict(), resolver.task_type, int(resolver.task_id or 0))


def is_chief(strategy=None):
    """Whether this process writes the run: always, unless multi-worker training makes it a
    worker other than the chief (the `chief` task, or worker 0 when the cluster has none).

    Args:
        strategy: a strategy (default: the current one) or a `ClusterConfig`.
    """
    config = cluster_config(strategy)
    return config is None or config.is_chief


def worker_index(strategy=None):
    """This process's place among the training processes: 0 for the chief (and outside
    multi-worker training); with a `chief` task, worker `i` is process `i + 1`."""
    config = cluster_config(strategy)
    return 0 if config is None else config.worker_index


def num_workers(strategy=None):
    """Training processes taking part (1 outside multi-worker training)."""
    config = cluster_config(strategy)
    return 1 if config is None else config.num_workers


@contextlib.contextmanager
def chief_output(path, strategy=None):
    """Where this process writes `path`: `path` itself on the chief, a private temporary
    directory on the other workers, removed on exit.

    Keras' `write_filepath` pattern: every worker runs the same saving code (saving can read
    synchronized variables, which needs all workers), but only the chief's files land, and
    the others never touch `path`, its parent or its lock file.

    Args:
        path: the file or directory the run writes (e.g. the run directory `--out`).
        strategy: a strategy (default: the current one) or a `ClusterConfig`.

    Yields:
        A `Path`: `path` on the chief; else `TMP/tftune-worker-N-XXXX/NAME`, whose parent exists
        and whose name is `path`'s.
    """
    path = Path(path)
    if is_chief(strategy):
        yield path
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"tftune-worker-{worker_index(strategy)}-"))
    try:
        yield scratch / path.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# === Training under any strategy ===


def fit(model, train_data, strategy=None, **kwargs):
    """`model.fit(train_data, **kwargs)`, or `fit_custom_loop` under `MultiWorkerMirroredStrategy`.

    Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy` (keras#20585; see the module's
    notes) and works on one device and under `MirroredStrategy`.

    Args:
        model: a model compiled under `strategy.scope()`.
        train_data: a `tf.data.Dataset` of global batches, e.g. `ShuffledEpochs.epochs(...)`
            (then pass its `steps_per_epoch`).
        strategy: default: the model's strategy.
        **kwargs: `fit`'s other arguments.

    Example:

    >>> train = lm_dataset(ids, seq_len=20, batch_size=32, shuffle=True)  # doctest: +SKIP
    >>> fit(model, train.epochs(0, 3), epochs=3, steps_per_epoch=train.steps_per_epoch)  # doctest: +SKIP
    """
    strategy = strategy or model.distribute_strategy
    if is_multi_worker(strategy):
        return multi_worker_loop.fit_custom_loop(model, train_data, strategy=strategy, **kwargs)
    return model.fit(train_data, **kwargs)


def evaluate(model, data, strategy=None):
    """`model.evaluate(data, return_dict=True)`, or `evaluate_custom_loop` under
    `MultiWorkerMirroredStrategy`, where Keras 3.15's `evaluate` fails (keras#20585)."""
    strategy = strategy or model.distribute_strategy
    if is_multi_worker(strategy):
        return multi_worker_loop.evaluate_custom_loop(model, data, strategy=strategy)
    return {name: float(value) for name, value in model.evaluate(data, verbose=0, return_dict=True).items()}


def fit_from(model, data, epochs_done, steps_done, epochs, **fit_kwargs):
    """`fit` from a checkpoint's position: the rest of a part-done epoch, then the others.

    Each epoch of `data` is drawn in an order that depends on the seed and the epoch alone, so
    nothing needs replaying: the part-done epoch skips the batches it had trained on, and the
    others are drawn as in an uninterrupted run.

    Args:
        model: the compiled model, its weights and optimizer already restored.
        data: the training batches, a `tftune.batches.ShuffledEpochs`.
        epochs_done: epochs completed before the checkpoint.
        steps_done: steps of the next epoch completed before the checkpoint.
        epochs: the epoch to stop after (Keras' `epochs`).
        **fit_kwargs: the other `fit` arguments; a callback with a `step_offset` (the
            `tftune.checkpoints.Checkpointing`) counts the part-done epoch's steps from `steps_done`.
    """
    if steps_done and epochs_done < epochs:
        for callback in fit_kwargs.get("callbacks", ()):
            if hasattr(callback, "step_offset"):
                callback.step_offset = steps_done
        rest_of_epoch = data.epochs(epochs_done, epochs_done + 1).skip(steps_done)
        fit(model, rest_of_epoch, initial_epoch=epochs_done, epochs=epochs_done + 1, **fit_kwargs)
        epochs_done += 1
    if epochs_done < epochs:
        fit(
            model,
            data.epochs(epochs_done, epochs),
            initial_epoch=epochs_done,
            epochs=epochs,
            steps_per_epoch=data.steps_per_epoch,
            **fit_kwargs,
        )
