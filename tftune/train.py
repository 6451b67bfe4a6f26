"""Language-model pretraining and classifier fine-tuning with gradual unfreezing.

Both entry points take a resolved `Recipe` and write a complete run directory (see
`tftune.runs`). Training features live in small Keras callbacks around `Model.fit`
(throughput, history with the unfreezing stage), in the spirit of flair's trainer plugins.
Both train under the recipe's `[distribute]` strategy (see `tftune.distribute`): one device,
`mirrored` over local devices, or `multi-worker` over several processes, where only the chief
writes the run.

Example:

>>> from tftune.recipe import load_recipe
>>> from tftune.train import pretrain, finetune
>>> recipe = load_recipe("gru-glove", ["pretrain.epochs=1"])  # doctest: +SKIP
>>> pretrain(recipe, "runs/lm")  # doctest: +SKIP
>>> finetune(recipe, "runs/lm", "runs/clf")  # doctest: +SKIP
"""

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftune import distribute
from tftune.cache import PendingCorpus, split_documents  # split_documents: bench imports it from here
from tftune.checkpoints import Checkpointing, RunCheckpoint, check_resumable, fit_from
from tftune.data import classification_dataset, lm_dataset, read_labeled, truncate
from tftune.embeddings import align, load_vectors
from tftune.errors import DataError, RecipeError, RunError, TrainingError
from tftune.export import export_classifier
from tftune.metrics import classification_metrics
from tftune.models import (
    build_classifier,
    build_encoder,
    build_ensemble,
    build_language_model,
    cudnn_report,
    global_policy_restored,
    recurrent_layer_names,
)
from tftune.open_vocab import (
    OpenWords,
    copy_recurrent_weights,
    grow_encoder,
    grow_output_weights,
    grow_vocabulary,
    measure_growth,
    unk_shares,
)
from tftune.presets import resolve_run
from tftune.recipe import Recipe
from tftune.runs import (
    FinetuneRun,
    PretrainRun,
    check_export_paths,
    check_run_paths,
    check_vector_size,
    check_writable_target,
    holds_output_lock,
)
from tftune.schedules import (
    DiscriminativeAdam,
    OneCycle,
    SlantedTriangular,
    Stage,
    discriminative_multipliers,
    unfreezing_stages,
)
from tftune.text import Tokenizer, Vocabulary

# ULMFiT's Adam betas for fine-tuning.
ADAM_BETAS = {"beta_1": 0.7, "beta_2": 0.99}


logger = logging.getLogger(__name__)


def log(message):
    """A progress line through the `tftune` logger (the CLI shows INFO lines on stderr as `tftune: ...`)."""
    logger.info(message)


def fit_verbosity():
    """A live progress bar on a terminal, one line per epoch in logs."""
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


# === Callbacks ===


class Throughput(keras.callbacks.Callback):
    """Training tokens per second of step time, leaving out the first (tracing) step.

    Both wall-clock and CPU time are kept: the CPU figure (all threads of this process) is
    what to compare on a machine shared with other jobs, where wall time depends on them.
    """

    def __init__(self, tokens_per_step):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.steps = 0
        self._first_step_done = False

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        if not self._first_step_done:
            self._first_step_done = True
            return
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start
        self.steps += 1

    @property
    def tokens_per_second(self):
        return self.steps * self.tokens_per_step / self.seconds if self.seconds else None

    @property
    def tokens_per_cpu_second(self):
        return self.steps * self.tokens_per_step / self.cpu_seconds if self.cpu_seconds else None


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first non-finite training loss with an error instead of a ruined model."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"training loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; "
                "nothing was written (try a lower learning rate, or precision.policy=float32)"
            )


class KeepBestWeights(keras.callbacks.Callback):
    """Remembers the weights of the best epoch by validation accuracy, across several `fit` calls.

    Ties go to the later epoch (more training at the same accuracy). With `patience` > 0 it
    stops training after that many epochs without improvement and sets `stopped`.

    Args:
        patience: epochs without a better validation accuracy before stopping; 0 = never stop.
    """

    def __init__(self, patience=0):
        super().__init__()
        self.patience = patience
        self.best_accuracy = -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped = False
        self._epochs_without_gain = 0

    def on_epoch_end(self, epoch, logs=None):
        accuracy = float((logs or {}).get("val_accuracy", -math.inf))
        if accuracy >= self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch + 1
            self.best_weights = self.model.get_weights()
            self._epochs_without_gain = 0
            return
        self._epochs_without_gain += 1
        if self.patience and self._epochs_without_gain >= self.patience:
            self.model.stop_training = self.stopped = True

    def restore(self):
        self.model.set_weights(self.best_weights)

    def get_state(self):
        """The progress to checkpoint (the best weights go separately, as arrays)."""
        accuracy = self.best_accuracy if math.isfinite(self.best_accuracy) else None
        return {"best_accuracy": accuracy, "best_epoch": self.best_epoch, "stopped": self.stopped,
                "epochs_without_gain": self._epochs_without_gain}

    def set_state(self, state, best_weights):
        accuracy = state["best_accuracy"]
        self.best_accuracy = -math.inf if accuracy is None else accuracy
        self.best_epoch, self.stopped = state["best_epoch"], state["stopped"]
        self._epochs_without_gain = state["epochs_without_gain"]
        self.best_weights = best_weights or None


class StageHistory(keras.callbacks.Callback):
    """Collects per-epoch logs across several `fit` calls, tagged with the unfreezing stage."""

    def __init__(self):
        super().__init__()
        self.epochs = []
        self.stage = None

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        if self.stage is not None:
            record.update(self.stage)
        record.update({key: float(value) for key, value in (logs or {}).items()})
        self.epochs.append(record)


def write_tensorboard_logs(epochs, directory):
    """Writes the per-epoch history as TensorBoard scalars (`tensorboard --logdir RUN/logs`).

    Uses TensorFlow's own summary writer with the scalars plugin's metadata, so the
    `tensorboard` package is needed only to view the logs, not to write them.
    """
    from tensorflow.core.framework import summary_pb2

    scalar = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for record in epochs:
            for key, value in record.items():
                if key not in ("epoch", "stage") and isinstance(value, float):
                    tf.summary.write(key, tf.constant(value, tf.float32), step=record["epoch"], metadata=scalar)
    writer.close()


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
    distribute.check_global_batch(recipe.get(batch_key), strategy, batch_key)
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
    return None


# === Pretraining ===


def _align_vectors(recipe, vocab, vectors, counts):
    settings = recipe["embeddings"]
    log(f"{len(vectors):,} {settings['format']} vectors from {settings['path']}")
    matrix, coverage = align(vocab, vectors, oov=settings["oov"], seed=recipe["pretrain"]["seed"], counts=counts)
    log(coverage.summary())
    return matrix, coverage


def pretrain(recipe: Recipe, out, force=False, callbacks=(), from_run=None, resume=False, strategy=None):
    """Trains the encoder as a next-token language model and writes a pretrain run.

    With `from_run`, language-model training continues from an existing pretrain run over
    `pretrain.corpus` (ULMFiT's target-domain step: e.g. the task's own text), keeping the
    run's vocabulary, tokenizer, encoder and LM head. With `pretrain.epochs = 0` nothing
    trains: the run holds the vocabulary and an untrained encoder (a from-scratch baseline).

    Args:
        recipe: the resolved recipe (its `embeddings`, `vocab`, `encoder`, `pretrain` and
            `precision` sections are used; with `from_run`, its encoder and vocab sections
            must match the run's).
        out: the run directory to create; it may not be, hold or lie inside anything the run
            reads (see `tftune.runs.check_run_paths`).
        force: replace an existing non-empty `out`.
        callbacks: extra Keras callbacks for `fit`.
        from_run: an existing pretrain run directory, or a shipped model's name, to continue from.
        resume: continue an interrupted run of the same recipe from its checkpoint (see
            `tftune.checkpoints`); without it, a leftover checkpoint is an error unless `force`.
        strategy: the `tf.distribute` strategy to train under; default: the recipe's
            `[distribute]` one (`tftune.distribute.recipe_strategy`). A multi-worker strategy must
            be created before any other TensorFlow work in the process, so pass it in. Only the
            chief writes `out` (and the checkpoint); the other workers write nothing there.

    Returns:
        The metrics written to `metrics.json`.
    """
    from_run = None if from_run is None else resolve_run(from_run)
    strategy = start_distribution(recipe, strategy, resume, "pretrain.batch_size")
    # Every worker checks the real `out` (a worker other than the chief writes elsewhere).
    check_run_paths(recipe, "pretrain", out, [] if from_run is None else [from_run], resume)
    with distribute.chief_output(out, strategy) as target, worker_failures(strategy), global_policy_restored():
        return _pretrain(recipe, target, force, callbacks, from_run, resume, strategy)


@holds_output_lock
def _pretrain(recipe, out, force, callbacks, from_run, resume, strategy):
    started = time.time()
    settings = recipe["pretrain"]
    keras.utils.set_random_seed(settings["seed"])
    checkpoint = RunCheckpoint(out)
    resumed = open_checkpoint(checkpoint, "pretrain", recipe, resume, force, from_run=from_run)
    base = None
    if from_run is not None:
        base = PretrainRun.open(from_run)
        check_encoder_matches(recipe, base)
        if base.recipe["pretrain"]["direction"] != settings["direction"]:
            raise RunError(
                f"pretrain.direction is {settings['direction']!r} in the recipe but "
                f"{base.recipe['pretrain']['direction']!r} in the pretrain run {base.path}"
            )
        tokenizer, vocab_options = base.tokenizer, {"vocab": base.vocab}
        if recipe["vocab"]["open"]:
            # Before tokenizing, so a bad vectors file fails fast; the corpus' words that it has join the vocabulary.
            vectors = load_vectors(recipe["embeddings"]["path"], recipe["embeddings"]["format"])
            vocab_options["open_words"] = OpenWords(vectors)
    else:
        tokenizer = Tokenizer(lowercase=recipe["embeddings"]["lowercase"])
        vocab_options = {"max_size": recipe["vocab"]["max_size"], "min_freq": recipe["vocab"]["min_freq"]}

    # Reads the corpus, unless the cache holds its ids, so a bad corpus file fails first.
    pending = PendingCorpus(
        settings["corpus"],
        tokenizer,
        settings["valid_fraction"],
        valid_paths=[settings["valid"]] if settings["valid"] else [],
        encoding=settings["encoding"],
        **vocab_options,
        log=log,
    )
    if base is None:
        # Before tokenizing and the first log line, so a bad vectors file fails fast, as one line.
        vectors = load_vectors(recipe["embeddings"]["path"], recipe["embeddings"]["format"])
    corpus = pending.encode()
    vocab, counts, train_ids, valid_ids = corpus.vocab, corpus.counts, corpus.train_ids, corpus.valid_ids
    log(f"corpus: {corpus.n_documents:,} documents, {sum(counts.values()):,} training tokens, vocabulary {len(vocab):,}")
    if settings["direction"] == "backward":
        # The whole stream read right to left: each document reversed, its <eos> now before it.
        train_ids, valid_ids = train_ids[::-1].copy(), valid_ids[::-1].copy()
        log("backward language model: the corpus is read right to left")
    if base is None:
        matrix, coverage = _align_vectors(recipe, vocab, vectors, counts)
        embedding_dim, coverage = int(matrix.shape[1]), dataclasses.asdict(coverage)
    else:
        log(f"continuing from the pretrain run {base.path}")
        embedding_dim = base.embedding_dim
        coverage = base.metrics().get("coverage")
        added = vocab.tokens[len(base.vocab) :]
        growth = measure_growth(counts, base.vocab, added)
        log(growth.summary())

    seq_len, batch_size = settings["seq_len"], settings["batch_size"]
    train_data = lm_dataset(train_ids, seq_len, batch_size, shuffle=True, seed=settings["seed"])
    valid_data = lm_dataset(valid_ids, seq_len, batch_size)

    policy = set_precision(recipe["precision"]["policy"])
    encoder_settings = recipe["encoder"]
    rates, output_dropout = encoder_dropouts(encoder_settings)
    # Every variable (the model's, the optimizer's) is made under the strategy, mirrored on its replicas.
    with strategy.scope():
        if base is None:
            encoder = build_encoder(
                matrix, encoder_settings["cell"], encoder_settings["layers"], encoder_settings["units"], **rates
            )
        else:
            base_encoder = restore_encoder(base, **rates)
            encoder = grow_encoder(base_encoder, vectors, added) if added else base_encoder
        language_model = build_language_model(
            encoder,
            settings["output"],
            settings["num_sampled"],
            unigram_counts=np.bincount(train_ids, minlength=len(vocab)),
            output_dropout=output_dropout,
            ar=settings["ar"],
            tar=settings["tar"],
        )
        if base is not None:
            restore_language_model(language_model, base, base_encoder, unk_shares(counts, vocab, added) if added else None)
    log(distribute.describe(strategy))
    log(f"precision policy: {policy}")
    for line in cudnn_report(encoder):
        log(line)
    # Clips the gradient summed over the replicas (Keras clips each replica's share), as on one device.
    adam = distribute.clip_after_all_reduce(keras.optimizers.Adam)
    with strategy.scope():
        # The model owns its loss: sampled or full softmax in training, always the full one in evaluation.
        language_model.compile(optimizer=adam(settings["learning_rate"], global_clipnorm=1.0))
        if resumed:
            checkpoint.restore(language_model)  # builds the optimizer's variables
    # The batch is the global one: the step's tokens over all replicas.
    throughput = Throughput(seq_len * batch_size)
    history = StageHistory()
    if resumed:
        history.epochs = resumed["history"]
        log(f"resuming after epoch {resumed['epochs_done']}, step {resumed['steps_done']} (from {checkpoint.path})")

    def progress(epochs_done, steps_done):
        return {"kind": "pretrain", "recipe": recipe.to_toml(), "from_run": from_run and str(from_run),
                "epochs_done": epochs_done, "steps_done": steps_done, "history": history.epochs}

    saver = Checkpointing(checkpoint, progress, settings["checkpoint_every"], resume_hint=RESUME_HINT)
    epochs_done = resumed["epochs_done"] if resumed else 0
    fit_from(
        language_model,
        train_data,
        epochs_done,
        resumed["steps_done"] if resumed else 0,
        settings["epochs"],
        saver,
        validation_data=valid_data,
        # A non-finite loss stops before the step's checkpoint: the last one saved stays good.
        callbacks=[throughput, history, StopOnNonFiniteLoss(), saver, *callbacks],
        shuffle=False,
        verbose=chief_verbosity(strategy),
    )
    valid_loss = distribute.evaluate(language_model, valid_data)["loss"]
    metrics = {
        "valid": {"loss": valid_loss, "perplexity": math.exp(min(valid_loss, 700.0))},
        "vocab_size": len(vocab),
        "train_tokens": int(len(train_ids)),
        "valid_tokens": int(len(valid_ids)),
        # Optimizer steps of the whole run (global batches), resumed ones included.
        "train_steps": int(language_model.optimizer.iterations.numpy()),
        "train_tokens_per_second": throughput.tokens_per_second,
        "train_tokens_per_cpu_second": throughput.tokens_per_cpu_second,
        "coverage": coverage,
        **({"open_vocabulary": dataclasses.asdict(growth)} if base is not None else {}),
        "precision_policy": policy,
        "distribute": distribution_summary(strategy),
        "output": settings["output"],
        "wall_seconds": round(time.time() - started, 1),
    }
    log(f"validation perplexity {metrics['valid']['perplexity']:.1f} after {metrics['train_steps']} training steps")
    with PretrainRun.create(out, force) as run:
        run.write_info(vocab, tokenizer, embedding_dim, **({"from_run": str(Path(from_run))} if base else {}))
        run.write_recipe(recipe)
        encoder.save_weights(run.encoder_weights)
        language_model.save_weights(run.language_model_weights)
        run.write_history(history.epochs)
        write_tensorboard_logs(history.epochs, run.logs)
        run.write_metrics(metrics)
    checkpoint.remove()
    log_written("pretrain", out, strategy)
    return metrics


# === Fine-tuning ===


# The [encoder] keys that leave the weights alone: a fine-tuning recipe may differ from the pretrain
# run there, as fine-tuning takes the run's rates (times finetune.dropout_scale).
DROPOUT_KEYS = ("dropout", "weight_dropout", "embedding_dropout", "input_dropout", "hidden_dropout", "output_dropout")


def encoder_dropouts(encoder_settings, scale=1.0):
    """`(build_encoder's dropout keywords, output_dropout)` of an `[encoder]` section, each rate times `scale`."""
    rates = {}
    for key in DROPOUT_KEYS:
        rates[key] = encoder_settings[key] * scale
        if rates[key] >= 1:
            raise RecipeError(
                f"finetune.dropout_scale = {scale:g} takes encoder.{key} from {encoder_settings[key]:g} to "
                f"{rates[key]:g}; every scaled dropout rate must stay below 1"
            )
    return rates, rates.pop("output_dropout")


def check_encoder_matches(recipe, pretrained):
    """The fine-tuning recipe must describe the same encoder as the pretrain run."""
    for section in ("encoder", "vocab"):
        for key, value in pretrained.recipe[section].items():
            if key in DROPOUT_KEYS or (section, key) == ("vocab", "open"):
                continue
            if recipe[section][key] != value:
                raise RunError(
                    f"{section}.{key} is {recipe[section][key]!r} in the recipe but {value!r} in the "
                    f"pretrain run {pretrained.path}; fine-tuning reuses the pretrained encoder"
                )
    check_vector_size(recipe, pretrained)


def restore_encoder(pretrained, dropout, use_cudnn="auto", **regularization):
    """Rebuilds the pretrained encoder and loads its weights (embedding included).

    `dropout`, `use_cudnn` and `**regularization` (the AWD-LSTM rates) go to `build_encoder`.
    """
    settings = pretrained.recipe["encoder"]
    placeholder = np.zeros((len(pretrained.vocab), pretrained.embedding_dim), dtype="float32")
    encoder = build_encoder(
        placeholder, settings["cell"], settings["layers"], settings["units"], dropout, use_cudnn, **regularization
    )
    try:
        encoder.load_weights(pretrained.encoder_weights)
    except ValueError as e:
        raise RunError(f"{pretrained.encoder_weights}: does not fit the recipe's encoder ({e})") from None
    return encoder


def restore_language_model(language_model, pretrained, base_encoder, shares=None):
    """Loads a pretrain run's encoder + LM head weights into `language_model`.

    Args:
        language_model: the language model to load into.
        pretrained: the `tftune.runs.PretrainRun`.
        base_encoder: the run's own encoder (`restore_encoder`).
        shares: `tftune.open_vocab.unk_shares` when `language_model` reads a vocabulary grown from
            the run's: the weights then load into a language model of the run's size, and its
            head grows into `language_model`'s, every new word a share of `<unk>`.
    """
    path = pretrained.language_model_weights
    if not path.is_file():
        raise RunError(f"{path}: missing; {pretrained.path} is not a complete pretrain run")
    source = language_model
    if shares is not None:
        source = build_language_model(base_encoder, language_model.output_kind, language_model.num_sampled)
    try:
        source.load_weights(path)
    except (ValueError, KeyError) as e:
        raise RunError(
            f"{path}: does not fit pretrain.output = {language_model.output_kind!r} "
            f"(the run used {pretrained.recipe['pretrain']['output']!r}; {e})"
        ) from None
    if shares is not None:
        copy_recurrent_weights(base_encoder, language_model.encoder)
        language_model.lm_head.set_weights(grow_output_weights(source.lm_head.get_weights(), *shares))
        if source.lm_projection is not None:
            language_model.lm_projection.set_weights(source.lm_projection.get_weights())


@dataclass
class LabeledSplits:
    labels: list
    train: tuple
    valid: tuple
    test: tuple | None


def load_labeled_splits(settings):
    """Reads train/valid/test; holds out part of train when there is no valid file."""
    columns = {
        "text_column": settings["text_column"],
        "label_column": settings["label_column"],
        "encoding": settings["encoding"],
    }
    train = read_labeled(settings["train"], **columns)
    if settings["valid"]:
        valid = read_labeled(settings["valid"], **columns)
    else:
        order = np.random.default_rng(settings["seed"]).permutation(len(train[0]))
        n_valid = max(1, round(len(order) * settings["valid_fraction"]))
        pick = lambda rows, idx: [rows[i] for i in idx]  # noqa: E731
        held, kept = order[:n_valid], order[n_valid:]
        valid = (pick(train[0], held), pick(train[1], held))
        train = (pick(train[0], kept), pick(train[1], kept))
    test = read_labeled(settings["test"], **columns) if settings["test"] else None
    labels = sorted(set(train[1]))
    if len(labels) < 2:
        raise DataError(f"{settings['train']}: only one class ({labels[0]!r}); a classifier needs at least 2")
    for name, split, path in (("valid", valid, settings["valid"]), ("test", test, settings["test"])):
        if split is None:
            continue
        unseen = sorted(set(split[1]) - set(labels))
        if unseen:
            raise DataError(
                f"{path or settings['train']}: {name} label(s) {', '.join(map(repr, unseen[:5]))} never seen in training"
            )
    return LabeledSplits(labels, train, valid, test)


def balanced_class_weights(label_ids, n_classes):
    """`examples / (classes * examples of the class)` per class, as Keras' `class_weight` takes it."""
    counts = np.bincount(np.asarray(label_ids, dtype="int64"), minlength=n_classes)
    return {index: len(label_ids) / (n_classes * count) for index, count in enumerate(counts) if count}


def build_finetune_optimizer(classifier, encoder, layer_names, settings):
    """One `DiscriminativeAdam` for every stage, built on every variable that will ever train.

    Keeping one optimizer keeps Adam's moments of the layers that already train when the next
    layer is unfrozen; each stage then only sets a fresh learning-rate cycle.
    """
    for name in layer_names:
        encoder.get_layer(name).trainable = True
    optimizer = DiscriminativeAdam(
        # Of the same kind as every stage's (a schedule or a float), so the optimizer's variables,
        # and so its checkpoints, have the same layout whichever stage they were written in.
        stage_learning_rate(settings, 0, 1),
        multipliers=discriminative_multipliers(layer_names, settings["lr_decay"]),
        **ADAM_BETAS,
    )
    optimizer.build(classifier.trainable_variables)
    return optimizer


def stage_learning_rate(settings, start_step, steps, stage=0):
    """The rate of stage number `stage` (from 0): `steps` optimizer steps from optimizer step `start_step`.

    Its peak is `learning_rate / stage_lr_decay ** stage`.
    """
    peak = settings["learning_rate"] / settings["stage_lr_decay"] ** stage
    schedule = {"stlr": SlantedTriangular, "one_cycle": OneCycle}.get(settings["schedule"])
    if schedule is None:
        return peak
    return schedule(peak, steps, start_step=start_step)


def predict_dataset(model, dataset):
    """Predicted and true class indices over a `(ids, label)` dataset."""
    predicted, true = [], []
    for ids, labels in dataset:
        predicted.append(np.argmax(model(ids, training=False), axis=-1))
        true.append(labels.numpy())
    return np.concatenate(true), np.concatenate(predicted)


@dataclass
class TrainedMember:
    """One fine-tuned classifier, with what its training recorded."""

    classifier: keras.Model
    history: list
    best: KeepBestWeights


@dataclass
class FinetuneProgress:
    """What a finetune run's checkpoint holds besides the classifier in training.

    Attributes:
        checkpoint: the run's `RunCheckpoint`.
        recipe: the run's recipe.
        from_runs: the pretrain runs, one per member.
        resumed: the state to resume from, or None.
        finished: the members already trained (`TrainedMember`s).
    """

    checkpoint: RunCheckpoint
    recipe: Recipe
    from_runs: list
    resumed: dict | None
    finished: list = dataclasses.field(default_factory=list)

    def resumed_member(self, index):
        """The saved state of member `index` when the run resumes inside it."""
        if self.resumed is not None and self.resumed["member"] == index:
            return self.resumed
        return None

    def state(self, member, epochs_done, steps_done, stage_start_step, history, best):
        return {
            "kind": "finetune",
            "recipe": self.recipe.to_toml(),
            "from_run": [str(path) for path in self.from_runs],
            "member": member,
            "epochs_done": epochs_done,
            "steps_done": steps_done,
            "stage_start_step": stage_start_step,
            "history": history,
            "best": best.get_state(),
            "finished": [{"history": done.history, "best": done.best.get_state()} for done in self.finished],
        }

    def arrays(self, best):
        arrays = {"best": best.best_weights or []}
        arrays.update({f"member_{index}": done.classifier.get_weights() for index, done in enumerate(self.finished)})
        return arrays


@dataclass
class OpenedVocabulary:
    """A pretrain run's vocabulary, grown with the words of the task's text that have a vector.

    Args:
        vocab: the grown vocabulary (the run's own when nothing was added).
        added: the words added, in id order.
        vectors: the `KeyedVectors` they came from (None with `vocab.open = false`).
        growth: the token coverage before and after (`tftune.open_vocab.Growth`), or None.
    """

    vocab: Vocabulary
    added: list
    vectors: object
    growth: object


def open_vocabulary(recipe, vocab, tokenizer, texts):
    """Grows `vocab` with the words of `texts` that have a vector (`vocab.open`), and logs the coverage."""
    if not recipe["vocab"]["open"]:
        return OpenedVocabulary(vocab, [], None, None)
    vectors = load_vectors(recipe["embeddings"]["path"], recipe["embeddings"]["format"])
    counts = Counter(token for text in texts for token in tokenizer.tokenize(text))
    added = OpenWords(vectors).new_words(counts, vocab)
    growth = measure_growth(counts, vocab, added)
    log(growth.summary())
    return OpenedVocabulary(grow_vocabulary(vocab, added), added, vectors, growth)


def classifier_dropouts(recipe, pretrained):
    """The pretrain run's encoder dropout rates times `finetune.dropout_scale`: see `encoder_dropouts`."""
    return encoder_dropouts(pretrained.recipe["encoder"], recipe["finetune"]["dropout_scale"])


def build_member_classifier(recipe, pretrained, name, n_classes, opened=None):
    """A classifier on `pretrained`'s encoder (weights restored), shaped by the recipe's head.

    With `opened` (an `OpenedVocabulary`), the encoder's embedding also holds the added words.
    """
    settings = recipe["finetune"]
    rates, output_dropout = classifier_dropouts(recipe, pretrained)
    encoder = restore_encoder(pretrained, **rates)
    if opened is not None and opened.added:
        encoder = grow_encoder(encoder, opened.vectors, opened.added)
    return build_classifier(
        encoder,
        n_classes,
        settings["head"],
        settings["head_units"],
        settings["head_dropout"],
        settings["pool_embeddings"],
        direction=pretrained.recipe["pretrain"]["direction"],
        name=name,
        output_dropout=output_dropout,
    )


def finetune_member(recipe, pretrained, name, data, labels, progress, callbacks=(), strategy=None, opened=None):
    """Builds a classifier on a pretrained encoder and trains it with gradual unfreezing.

    Args:
        recipe: the resolved recipe (its `finetune` section is used).
        pretrained: the `tftune.runs.PretrainRun` whose encoder the classifier starts from.
        name: the classifier's model name.
        data: `{"train", "valid", "class_weight"}`: the datasets and optional class weights.
        labels: class names.
        progress: the run's `FinetuneProgress` (checkpoints, resume, earlier members).
        callbacks: extra Keras callbacks for every `fit` call.
        strategy: the `tf.distribute` strategy to train under (default: the current one).
        opened: the `OpenedVocabulary` the classifier reads, when words joined the run's.

    Returns:
        A `TrainedMember` holding the weights of the best (or last) epoch.
    """
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    settings = recipe["finetune"]
    index = len(progress.finished)
    layer_names = recipe_layer_names(pretrained.recipe)
    with strategy.scope():
        classifier = build_member_classifier(recipe, pretrained, name, len(labels), opened)
        encoder = classifier.get_layer("encoder")
        optimizer = build_finetune_optimizer(classifier, encoder, layer_names, settings)
    for line in cudnn_report(encoder):
        log(line)
    steps_per_epoch = int(data["train"].cardinality())
    history = StageHistory()
    best = KeepBestWeights(settings["patience"])
    epochs_done = steps_done = stage_start_step = 0
    resumed = progress.resumed_member(index)
    if resumed:
        history.epochs = resumed["history"]
        best.set_state(resumed["best"], progress.checkpoint.load_arrays("best"))
        epochs_done, steps_done = resumed["epochs_done"], resumed["steps_done"]
    saver = Checkpointing(
        progress.checkpoint,
        lambda epochs, steps: progress.state(index, epochs, steps, stage_start_step, history.epochs, best),
        settings["checkpoint_every"],
        resume_hint=RESUME_HINT,
        arrays=lambda: progress.arrays(best),
    )
    if settings["unfreeze"] == "gradual":
        stages = unfreezing_stages(len(layer_names), settings["stage_epochs"], settings["epochs"])
    else:
        stages = [Stage(trainable_layers=len(layer_names), epochs=settings["epochs"])]
    stage_end = 0
    for number, stage in enumerate(stages):
        stage_begin, stage_end = stage_end, stage_end + stage.epochs
        if best.stopped or epochs_done >= stage_end:
            continue  # done before the checkpoint this run resumes from
        trainable = set(layer_names[len(layer_names) - stage.trainable_layers :])
        for layer_name in layer_names:
            encoder.get_layer(layer_name).trainable = layer_name in trainable
        log(
            f"{name} stage {number + 1}/{len(stages)}: training the head"
            + (f" and {', '.join(sorted(trainable))}" if trainable else " only")
            + f" for {stage.epochs} epoch(s)"
        )
        # Trainable flags are read at compile time, so every stage compiles again.
        with strategy.scope():
            classifier.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            if resumed:
                progress.checkpoint.restore(classifier)
        if resumed:
            resumed_inside_stage = epochs_done > stage_begin or steps_done > 0
            stage_start_step = (
                resumed["stage_start_step"] if resumed_inside_stage else int(optimizer.iterations.numpy())
            )
            resumed = None
        else:
            stage_start_step = int(optimizer.iterations.numpy())
        optimizer.learning_rate = stage_learning_rate(
            settings, stage_start_step, stage.epochs * steps_per_epoch, stage=number
        )
        history.stage = {"stage": number + 1, "trainable_layers": sorted(trainable)}
        fit_from(
            classifier,
            data["train"],
            epochs_done,
            steps_done,
            stage_end,
            saver,
            validation_data=data["valid"],
            class_weight=data["class_weight"],
            # Best weights and a finite loss are checked before the epoch's checkpoint is written.
            callbacks=[history, best, StopOnNonFiniteLoss(), saver, *callbacks],
            shuffle=False,
            verbose=chief_verbosity(strategy),
        )
        epochs_done, steps_done = stage_end, 0
        if best.stopped:
            log(f"no better validation accuracy for {settings['patience']} epoch(s): stopping")
            break
    if settings["restore_best"]:
        best.restore()
        log(f"{name}: kept the weights of epoch {best.best_epoch} (validation accuracy {best.best_accuracy:.4f})")
    return TrainedMember(classifier, history.epochs, best)


def member_names(directions):
    """Model names of the ensemble members: by direction, numbered when a direction repeats."""
    if len(directions) == 1:
        return ["classifier"]
    if len(set(directions)) == len(directions):
        return [f"classifier_{direction}" for direction in directions]
    return [f"classifier_{number}" for number in range(1, len(directions) + 1)]


def check_same_vocabulary(members):
    """An ensemble's members read the same ids, so they must share one vocabulary and tokenizer."""
    first = members[0]
    for other in members[1:]:
        if (other.vocab.fingerprint(), other.tokenizer.get_config()) != (
            first.vocab.fingerprint(),
            first.tokenizer.get_config(),
        ):
            raise RunError(
                f"{other.path}: its vocabulary or tokenizer differs from {first.path}'s; the runs of an ensemble "
                "must be pretrained on the same corpus with the same vocab and embeddings settings"
            )


def finetune(recipe: Recipe, from_run, out, force=False, callbacks=(), resume=False, strategy=None):
    """Fine-tunes pretrained encoders as a classifier, then exports it.

    With `finetune.unfreeze = "gradual"`, stage 0 trains the head only and each following
    stage unfreezes one more recurrent layer from the top, until all train; with `"all"`,
    one stage trains everything. The embedding stays frozen throughout. Each stage runs a
    slanted triangular learning-rate cycle with discriminative rates (each layer down gets
    the rate of the one above divided by `finetune.lr_decay`). Given several pretrain runs
    (e.g. a forward and a backward language model), each gets its own classifier, trained
    the same way, and the export averages their probabilities (ULMFiT's ensemble).

    Args:
        recipe: the resolved recipe (`finetune` and `precision` sections are used; its
            encoder must match the pretrain runs').
        from_run: a pretrain run directory, or a list of them for an ensemble.
        out: the finetune run directory to create (the SavedModel goes to `out/export`); it may
            not be, hold or lie inside anything the run reads (see `tftune.runs.check_run_paths`).
        force: replace an existing non-empty `out`.
        callbacks: extra Keras callbacks for every `fit` call.
        resume: continue an interrupted run of the same recipe and runs from its checkpoint
            (in the member, stage, epoch and step where it stopped).
        strategy: the `tf.distribute` strategy to train under; default: the recipe's
            `[distribute]` one (see `pretrain`). Only the chief writes `out`.

    Returns:
        The metrics written to `metrics.json`.
    """
    from_runs = [resolve_run(path) for path in ([from_run] if isinstance(from_run, (str, Path)) else from_run)]
    strategy = start_distribution(recipe, strategy, resume, "finetune.batch_size")
    check_run_paths(recipe, "finetune", out, from_runs, resume)
    with distribute.chief_output(out, strategy) as target, worker_failures(strategy), global_policy_restored():
        return _finetune(recipe, from_runs, target, force, callbacks, resume, strategy)


@holds_output_lock
def _finetune(recipe, from_runs, out, force, callbacks, resume, strategy):
    started = time.time()
    checkpoint = RunCheckpoint(out)
    resumed = open_checkpoint(checkpoint, "finetune", recipe, resume, force, from_run=[str(path) for path in from_runs])
    members = [PretrainRun.open(path) for path in from_runs]
    for pretrained in members:
        check_encoder_matches(recipe, pretrained)
        classifier_dropouts(recipe, pretrained)  # a dropout_scale that takes a rate to 1 fails before training
    check_same_vocabulary(members)
    vocab, tokenizer = members[0].vocab, members[0].tokenizer
    settings = recipe["finetune"]
    keras.utils.set_random_seed(settings["seed"])
    splits = load_labeled_splits(settings)
    opened = open_vocabulary(recipe, vocab, tokenizer, splits.train[0] + splits.valid[0])
    vocab = opened.vocab
    label_index = {label: i for i, label in enumerate(splits.labels)}

    def encode(split):
        texts, labels = split
        ids = truncate(vocab.encode(texts, tokenizer), settings["max_len"])
        return ids, [label_index[label] for label in labels]

    batch_size = settings["batch_size"]
    data = {
        "train": classification_dataset(*encode(splits.train), batch_size, shuffle=True, seed=settings["seed"]),
        "valid": classification_dataset(*encode(splits.valid), batch_size),
        "class_weight": None,
    }
    if settings["class_weight"] == "balanced":
        train_labels = [label_index[label] for label in splits.train[1]]
        data["class_weight"] = balanced_class_weights(train_labels, len(splits.labels))
    test_data = classification_dataset(*encode(splits.test), batch_size) if splits.test else None
    log(
        f"classes: {', '.join(splits.labels)}; {len(splits.train[0]):,} train, "
        f"{len(splits.valid[0]):,} valid, {len(splits.test[0]) if splits.test else 0:,} test examples"
    )

    policy = set_precision(recipe["precision"]["policy"])
    log(distribute.describe(strategy))
    log(f"precision policy: {policy}")
    directions = [pretrained.recipe["pretrain"]["direction"] for pretrained in members]
    names = member_names(directions)
    progress = FinetuneProgress(checkpoint, recipe, from_runs, resumed)
    if resumed:
        log(f"resuming {names[resumed['member']]} after epoch {resumed['epochs_done']}, step {resumed['steps_done']}")
        for index, done in enumerate(resumed["finished"]):
            with strategy.scope():
                classifier = build_member_classifier(
                    recipe, members[index], names[index], len(splits.labels), opened
                )
                classifier.set_weights(checkpoint.load_arrays(f"member_{index}"))
            best = KeepBestWeights(settings["patience"])
            best.set_state(done["best"], None)
            progress.finished.append(TrainedMember(classifier, done["history"], best))
    for pretrained, name in list(zip(members, names))[len(progress.finished) :]:
        progress.finished.append(
            finetune_member(recipe, pretrained, name, data, splits.labels, progress, callbacks, strategy, opened)
        )
    trained = progress.finished

    def scores(model):
        result = {"valid": classification_metrics(*predict_dataset(model, data["valid"]), splits.labels)}
        if test_data is not None:
            result["test"] = classification_metrics(*predict_dataset(model, test_data), splits.labels)
        return result

    def training_summary(member):
        return {
            "epochs": len(member.history),
            "best_epoch": member.best.best_epoch,
            "weights_from_epoch": member.best.best_epoch if settings["restore_best"] else len(member.history),
            "stopped_early": member.best.stopped,
        }

    if len(trained) == 1:
        model = trained[0].classifier
        metrics = {**scores(model), "precision_policy": policy, "distribute": distribution_summary(strategy),
                   **training_summary(trained[0])}
        history = trained[0].history
    else:
        model = build_ensemble([member.classifier for member in trained])
        metrics = {**scores(model), "precision_policy": policy, "distribute": distribution_summary(strategy)}
        metrics["members"] = [
            {"name": name, "pretrain_run": str(pretrained.path), "direction": direction,
             **scores(member.classifier), **training_summary(member)}
            for name, pretrained, direction, member in zip(names, members, directions, trained)
        ]
        history = [{"member": name, **epoch} for name, member in zip(names, trained) for epoch in member.history]
    if opened.growth is not None:
        metrics["open_vocabulary"] = dataclasses.asdict(opened.growth)
    summary = f"valid accuracy {metrics['valid']['accuracy']:.4f}"
    if "test" in metrics:
        summary += f", test accuracy {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f}"
    log(summary)

    with FinetuneRun.create(out, force) as run:
        run.write_info(
            vocab, tokenizer, members[0].embedding_dim,
            pretrain_run=str(Path(from_runs[0])),
            members=[{"name": name, "pretrain_run": str(Path(path)), "direction": direction}
                     for name, path, direction in zip(names, from_runs, directions)],
        )
        run.write_recipe(recipe)
        run.write_labels(splits.labels)
        model.save_weights(run.classifier_weights)
        run.write_history(history)
        write_tensorboard_logs(history, run.logs)
        export_classifier(model, vocab, tokenizer, splits.labels, settings["max_len"], run.export)
        metrics["wall_seconds"] = round(time.time() - started, 1)
        run.write_metrics(metrics)
    checkpoint.remove()
    log_written("finetune", out, strategy)
    return metrics


def recipe_layer_names(recipe):
    return recurrent_layer_names(recipe["encoder"]["layers"])


def reexport(run_dir, out, force=False):
    """Exports a finetune run's classifier again (e.g. to another directory).

    Args:
        run_dir: the finetune run.
        out: the export directory; `run_dir/export`, or a place outside the run (see
            `tftune.runs.check_export_paths`).
        force: replace an existing non-empty `out`.
    """
    check_export_paths(run_dir, out)
    check_writable_target(out, force, replaces="export")
    run = FinetuneRun.open(run_dir)
    recipe, vocab, labels = run.recipe, run.vocab, run.labels()
    settings = recipe["finetune"]
    encoder_settings = recipe["encoder"]
    placeholder = np.zeros((len(vocab), run.embedding_dim), dtype="float32")
    # Runs written before ensembles existed hold one forward classifier.
    members = run.info.get("members") or [{"name": "classifier", "direction": "forward"}]
    classifiers = [
        build_classifier(
            build_encoder(placeholder, encoder_settings["cell"], encoder_settings["layers"], encoder_settings["units"],
                          0.0, use_cudnn=False),
            len(labels),
            settings["head"],
            settings["head_units"],
            pool_embeddings=settings["pool_embeddings"],
            direction=member["direction"],
            name=member["name"],
        )
        for member in members
    ]
    classifier = classifiers[0] if len(classifiers) == 1 else build_ensemble(classifiers)
    classifier.load_weights(run.classifier_weights)
    return export_classifier(classifier, vocab, run.tokenizer, labels, settings["max_len"], out)
