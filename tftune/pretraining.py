"""Language-model pretraining, as small stages: prepare the corpus, build, fit, evaluate, write.

`pretrain` trains the backbone as a next-token language model on unlabeled text, from the
recipe's vectors or continuing a pretrain run (ULMFiT's target-domain step), and writes a
pretrain run (`tftune.runs.PretrainRun`). Each stage is a function of its own; `_pretrain` only
calls them in order.

Example:

>>> from tftune.inputs import corpus_data
>>> from tftune.recipe import load_recipe
>>> from tftune.pretraining import pretrain
>>> recipe = load_recipe("gru-glove", ["pretrain.epochs=1"])  # doctest: +SKIP
>>> pretrain(recipe, "runs/lm", corpus_data("corpus.txt"))["valid"]["perplexity"]  # doctest: +SKIP
"""

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np

from tftune import distribute, keras_private
from tftune.cache import PendingCorpus
from tftune.callbacks import StageHistory, StopOnNonFiniteLoss, Throughput, restore_plugins, tensorboard
from tftune.checkpoints import Checkpointing, RunCheckpoint
from tftune.batches import lm_dataset
from tftune.embeddings import align, load_vectors
from tftune.errors import RunError
from tftune.inputs import CorpusData
from tftune.model_configs import backbone_config, encoder_dropouts, language_model_config
from tftune.models import LanguageModel, TextBackbone, TextPreprocessor, global_policy_restored
from tftune.open_vocab import OpenWords, copy_recurrent_weights, grow_encoder, grow_output_weights, measure_growth, unk_shares
from tftune.pretrained_models import resolve_run
from tftune.recipe import Recipe
from tftune.replicas import clip_after_all_reduce
from tftune.run_lock import holds_output_lock
from tftune.output_paths import check_run_paths
from tftune.runs import PretrainRun, reading_artifact
from tftune.text import Tokenizer
from tftune.run_setup import (
    RESUME_HINT,
    check_encoder_matches,
    check_same_data,
    chief_verbosity,
    distribution_summary,
    log,
    log_setup,
    log_written,
    open_checkpoint,
    set_precision,
    start_distribution,
    worker_failures,
)


def pretrain(recipe: Recipe, out, data: CorpusData, force=False, callbacks=(), from_run=None, resume=False,
             strategy=None):
    """Trains the encoder as a next-token language model and writes a pretrain run.

    With `from_run`, language-model training continues from an existing pretrain run over
    the corpus (ULMFiT's target-domain step: e.g. the task's own text), keeping the
    run's vocabulary, tokenizer, encoder and LM head. With `pretrain.epochs = 0` nothing
    trains: the run holds the vocabulary and an untrained encoder (a from-scratch baseline).

    Args:
        recipe: the resolved recipe (its `embeddings`, `vocab`, `encoder`, `pretrain` and
            `precision` sections are used; with `from_run`, its encoder and vocab sections
            must match the run's).
        out: the run directory to create; it may not be, hold or lie inside anything the run
            reads (see `tftune.output_paths.check_run_paths`).
        data: the text to train on (`tftune.inputs.CorpusData`); its fingerprints go into `run.json`,
            and a resumed run refuses other data.
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
    check_run_paths(recipe, out, [] if from_run is None else [from_run], resume, data.files())
    with distribute.chief_output(out, strategy) as target, worker_failures(strategy), global_policy_restored():
        return _pretrain(recipe, target, data, force, callbacks, from_run, resume, strategy)


@holds_output_lock
def _pretrain(recipe, out, data, force, callbacks, from_run, resume, strategy):
    started = time.time()
    keras.utils.set_random_seed(recipe.pretrain.seed)
    checkpoint = RunCheckpoint(out)
    resumed = open_checkpoint(checkpoint, "pretrain", recipe, resume, force, from_run=from_run)
    fingerprints = check_same_data(data, resumed)
    base = open_base_run(recipe, from_run)
    corpus = prepare_corpus(recipe, base, data)
    policy = set_precision(recipe.precision.policy)
    language_model = build_language_model(recipe, corpus, base, strategy)
    log_setup(strategy, policy, language_model.backbone)
    fitted = fit_language_model(language_model, recipe, corpus, checkpoint, resumed, callbacks, strategy, from_run,
                                fingerprints)
    metrics = evaluate_language_model(language_model, recipe, corpus, fitted, strategy)
    metrics.update(precision_policy=policy, wall_seconds=round(time.time() - started, 1))
    write_pretrain_run(out, force, recipe, corpus, language_model, fitted.history, metrics, from_run, checkpoint,
                       fingerprints)
    log_written("pretrain", out, strategy)
    return metrics


# === Stage 1: the corpus ===


@dataclasses.dataclass
class LanguageModelCorpus:
    """The tokenized corpus and the vocabulary the language model reads.

    Attributes:
        vocab: the vocabulary (a continued run's, grown by `vocab.open`; else built from the corpus).
        tokenizer: the tokenizer.
        counts: training-token counts by id.
        train_ids: the training token stream (reversed for a backward model).
        valid_ids: the validation token stream.
        n_documents: documents read.
        embedding_dim: width of the word vectors.
        matrix: the aligned vectors of a new run, else None (the continued run's embedding is used).
        coverage: the vectors' coverage of the vocabulary (`tftune.embeddings.Coverage` as a dict).
        added: words added to a continued run's vocabulary.
        vectors: the `KeyedVectors` the vectors came from, or None.
        growth: a continued run's vocabulary growth (`tftune.open_vocab.Growth`), or None.
    """

    vocab: object
    tokenizer: Tokenizer
    counts: object
    train_ids: np.ndarray
    valid_ids: np.ndarray
    n_documents: int
    embedding_dim: int
    matrix: np.ndarray | None = None
    coverage: dict | None = None
    added: list = dataclasses.field(default_factory=list)
    vectors: object = None
    growth: object = None


def open_base_run(recipe, from_run):
    """The pretrain run to continue (checked against the recipe), or None for a new language model."""
    if from_run is None:
        return None
    base = PretrainRun.open(from_run)
    check_encoder_matches(recipe, base)
    direction, base_direction = recipe.pretrain.direction, base.recipe.pretrain.direction
    if base_direction != direction:
        raise RunError(
            f"pretrain.direction is {direction!r} in the recipe but {base_direction!r} in the pretrain run {base.path}"
        )
    return base


def prepare_corpus(recipe, base, data):
    """Reads and tokenizes the corpus (or takes its ids from the cache) and aligns the vectors.

    The vectors are loaded before tokenizing, so that a bad vectors file fails fast, as one line.
    """
    settings = recipe.pretrain
    tokenizer, vocab_options, vectors = _vocabulary_source(recipe, base)
    valid = data.valid
    pending = PendingCorpus(
        data.corpus.paths, tokenizer, settings.valid_fraction, documents=data.corpus.texts,
        valid_paths=valid.paths if valid else (), valid_documents=valid.texts if valid else None,
        text_column=data.text_column, encoding=data.encoding, **vocab_options, log=log,
    )
    if base is None:
        vectors = load_vectors(recipe.embeddings.path, recipe.embeddings.format)
    encoded = pending.encode()
    vocab, counts = encoded.vocab, encoded.counts
    log(f"corpus: {encoded.n_documents:,} documents, {sum(counts.values()):,} training tokens, vocabulary {len(vocab):,}")
    train_ids, valid_ids = encoded.train_ids, encoded.valid_ids
    if settings.direction == "backward":
        # The whole stream read right to left: each document reversed, its <eos> now before it.
        train_ids, valid_ids = train_ids[::-1].copy(), valid_ids[::-1].copy()
        log("backward language model: the corpus is read right to left")
    corpus = LanguageModelCorpus(vocab, tokenizer, counts, train_ids, valid_ids, encoded.n_documents, 0, vectors=vectors)
    if base is None:
        _align(recipe, corpus)
    else:
        log(f"continuing from the pretrain run {base.path}")
        corpus.embedding_dim, corpus.coverage = base.embedding_dim, base.metrics().get("coverage")
        corpus.added = vocab.tokens[len(base.vocab) :]
        corpus.growth = measure_growth(counts, base.vocab, corpus.added)
        log(corpus.growth.summary())
    return corpus


def _vocabulary_source(recipe, base):
    """`(tokenizer, PendingCorpus vocabulary options, vectors or None)`: a continued run's, else the recipe's."""
    if base is None:
        options = {"max_size": recipe.vocab.max_size, "min_freq": recipe.vocab.min_freq}
        return Tokenizer(lowercase=recipe.embeddings.lowercase), options, None
    options, vectors = {"vocab": base.vocab}, None
    if recipe.vocab.open:
        # The corpus' words that the vectors have join the vocabulary.
        vectors = load_vectors(recipe.embeddings.path, recipe.embeddings.format)
        options["open_words"] = OpenWords(vectors)
    return base.tokenizer, options, vectors


def _align(recipe, corpus):
    settings = recipe.embeddings
    log(f"{len(corpus.vectors):,} {settings.format} vectors from {settings.path}")
    corpus.matrix, coverage = align(
        corpus.vocab, corpus.vectors, oov=settings.oov, seed=recipe.pretrain.seed, counts=corpus.counts
    )
    log(coverage.summary())
    corpus.embedding_dim, corpus.coverage = int(corpus.matrix.shape[1]), dataclasses.asdict(coverage)


# === Stage 2: the model ===


def build_language_model(recipe, corpus, base, strategy):
    """The compiled `LanguageModel`: a new one on the aligned vectors, or the continued run's, grown.

    Every variable (the model's, the optimizer's) is made under the strategy, mirrored on its replicas.
    """
    with strategy.scope():
        if base is None:
            backbone = TextBackbone(
                **backbone_config(recipe.encoder, len(corpus.vocab), corpus.embedding_dim), embeddings=corpus.matrix
            )
        else:
            with reading_artifact(base.backbone_weights):
                base_backbone = TextBackbone.from_preset(base.path, **encoder_dropouts(recipe.encoder)[0])
            backbone = grow_encoder(base_backbone, corpus.vectors, corpus.added) if corpus.added else base_backbone
        unigram_counts = np.bincount(corpus.train_ids, minlength=len(corpus.vocab))
        model = LanguageModel(backbone, unigram_counts=unigram_counts, **language_model_config(recipe))
        if base is not None:
            shares = unk_shares(corpus.counts, corpus.vocab, corpus.added) if corpus.added else None
            restore_language_model(model, base, base_backbone, shares)
        # Clips the gradient summed over the replicas (Keras clips each replica's share), as on one device.
        adam = clip_after_all_reduce(keras.optimizers.Adam)
        # The model owns its loss: sampled or full softmax in training, always the full one in evaluation.
        model.compile(optimizer=adam(recipe.pretrain.learning_rate, global_clipnorm=1.0))
    return model


def restore_language_model(language_model, pretrained, base_backbone, shares=None):
    """Loads a pretrain run's LM head weights into `language_model`, whose backbone is loaded.

    Args:
        language_model: the language model to load into.
        pretrained: the `tftune.runs.PretrainRun`.
        base_backbone: the run's own backbone (`TextBackbone.from_preset`).
        shares: `tftune.open_vocab.unk_shares` when `language_model` reads a vocabulary grown from
            the run's: the weights then load into a language model of the run's size, and its
            head grows into `language_model`'s, every new word a share of `<unk>`.
    """
    path = pretrained.task_weights
    if not path.is_file():
        raise RunError(f"{path}: missing; {pretrained.path} is not a complete pretrain run")
    source = language_model
    if shares is not None:
        source = LanguageModel(base_backbone, language_model.output_kind, language_model.num_sampled)
    try:
        with reading_artifact(path):
            keras_private.load_weights_skipping(source, path, skip=[source.backbone])
    except (ValueError, KeyError) as e:
        raise RunError(
            f"{path}: does not fit pretrain.output = {language_model.output_kind!r} "
            f"(the run used {pretrained.recipe.pretrain.output!r}; {e})"
        ) from None
    if shares is not None:
        copy_recurrent_weights(base_backbone, language_model.backbone)
        language_model.lm_head.set_weights(grow_output_weights(source.lm_head.get_weights(), *shares))
        if source.lm_projection is not None:
            language_model.lm_projection.set_weights(source.lm_projection.get_weights())


# === Stage 3: fit ===


@dataclasses.dataclass
class FittedLanguageModel:
    """What fitting recorded: the per-epoch history, the throughput and the validation data."""

    history: list
    throughput: Throughput
    valid_data: object


def fit_language_model(model, recipe, corpus, checkpoint, resumed, callbacks, strategy, from_run=None, inputs=None):
    """Fits the language model for `pretrain.epochs`, from the checkpoint's position when resumed.

    A checkpoint is written every epoch (and every `pretrain.checkpoint_every` steps); the
    curves go to TensorBoard live (`checkpoint.logs`).
    """
    settings = recipe.pretrain
    seq_len, batch_size = settings.seq_len, settings.batch_size
    train_data = lm_dataset(corpus.train_ids, seq_len, batch_size, shuffle=True, seed=settings.seed)
    valid_data = lm_dataset(corpus.valid_ids, seq_len, batch_size)
    throughput = Throughput(seq_len * batch_size)  # the global batch: the step's tokens over all replicas
    history = StageHistory()
    epochs_done = steps_done = 0
    if resumed:
        with strategy.scope():
            checkpoint.restore(model)  # builds the optimizer's variables
        restore_plugins([history], resumed, checkpoint.load_arrays)
        epochs_done, steps_done = resumed["epochs_done"], resumed["steps_done"]
        log(f"resuming after epoch {epochs_done}, step {steps_done} (from {checkpoint.path})")

    def progress(epochs, steps):
        return {"kind": "pretrain", "recipe": recipe.to_toml(), "from_run": from_run and str(from_run),
                "inputs": inputs, "epochs_done": epochs, "steps_done": steps}

    saver = Checkpointing(checkpoint, progress, [history], settings.checkpoint_every, resume_hint=RESUME_HINT)
    log(f"live curves: tensorboard --logdir {checkpoint.logs} (moved into the run when it is written)")
    distribute.fit_from(
        model, train_data, epochs_done, steps_done, settings.epochs,
        validation_data=valid_data,
        # A non-finite loss stops before the step's checkpoint: the last one saved stays good.
        callbacks=[throughput, history, StopOnNonFiniteLoss(), tensorboard(checkpoint.logs), saver, *callbacks],
        shuffle=False,
        verbose=chief_verbosity(strategy),
    )
    return FittedLanguageModel(history.epochs, throughput, valid_data)


# === Stage 4: evaluate ===


def evaluate_language_model(model, recipe, corpus, fitted, strategy):
    """The run's metrics: full-softmax validation loss and perplexity, sizes, throughput, coverage."""
    valid_loss = distribute.evaluate(model, fitted.valid_data)["loss"]
    metrics = {
        "valid": {"loss": valid_loss, "perplexity": math.exp(min(valid_loss, 700.0))},
        "vocab_size": len(corpus.vocab),
        "train_tokens": int(len(corpus.train_ids)),
        "valid_tokens": int(len(corpus.valid_ids)),
        # Optimizer steps of the whole run (global batches), resumed ones included.
        "train_steps": int(model.optimizer.iterations.numpy()),
        "train_tokens_per_second": fitted.throughput.tokens_per_second,
        "train_tokens_per_cpu_second": fitted.throughput.tokens_per_cpu_second,
        "coverage": corpus.coverage,
        **({"open_vocabulary": dataclasses.asdict(corpus.growth)} if corpus.growth is not None else {}),
        "distribute": distribution_summary(strategy),
        "output": recipe.pretrain.output,
    }
    log(f"validation perplexity {metrics['valid']['perplexity']:.1f} after {metrics['train_steps']} training steps")
    return metrics


# === Stage 5: write ===


def write_pretrain_run(out, force, recipe, corpus, model, history, metrics, from_run, checkpoint, inputs):
    """Writes the pretrain run whole (staged, then moved into place), its live logs included; then
    removes its checkpoint."""
    with PretrainRun.create(out, force, checkpoint) as run:
        run.write_info(corpus.vocab, corpus.tokenizer, corpus.embedding_dim, inputs=inputs,
                       **({"from_run": str(Path(from_run))} if from_run is not None else {}))
        run.write_recipe(recipe)
        model.preprocessor = TextPreprocessor(corpus.vocab, lowercase=corpus.tokenizer.lowercase)
        run.save_model(model)
        run.write_history(history)
        run.adopt_logs(checkpoint.logs)
        run.write_metrics(metrics)
