"""Classifier fine-tuning with gradual unfreezing, as small stages: read the task, fit, evaluate, write.

`finetune` turns pretrained encoders into a classifier (or an ensemble of one classifier per
pretrain run, e.g. a forward and a backward one) and writes a finetune run with its raw-string
SavedModel (`tftune.runs.FinetuneRun`). The task and its open vocabulary come from
`tftune.labeled_task`; each classifier trains through `tftune.unfreezing.fit_unfreezing_stages`:
the head first, then one more recurrent layer per stage, each stage with its own slanted
triangular cycle and discriminative rates. `_finetune` only calls the stages in order.

Example:

>>> from tftune.inputs import labeled_data
>>> from tftune.recipe import load_recipe
>>> from tftune.finetuning import finetune
>>> recipe = load_recipe("gru-glove", ["finetune.epochs=3"])  # doctest: +SKIP
>>> finetune(recipe, "runs/lm", "runs/clf", labeled_data("train.csv"))["valid"]["accuracy"]  # doctest: +SKIP
"""

import dataclasses
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftune import distribute
from tftune.callbacks import (
    KeepBestWeights,
    RunProgress,
    StageHistory,
    StopOnNonFiniteLoss,
    restore_plugins,
    tensorboard,
)
from tftune.checkpoints import Checkpointing, RunCheckpoint
from tftune.errors import RunError
from tftune.export import export_classifier
from tftune.inputs import LabeledData
from tftune.labeled_task import prepare_task
from tftune.metrics import classification_metrics
from tftune.model_configs import classifier_config, encoder_dropouts
from tftune.models import (
    ClassifierEnsemble,
    TextBackbone,
    TextClassifier,
    TextPreprocessor,
    ensemble_members,
    global_policy_restored,
)
from tftune.open_vocab import grow_encoder
from tftune.output_paths import check_export_paths, check_run_paths
from tftune.pretrained_models import resolve_run
from tftune.recipe import Recipe
from tftune.runs import FinetuneRun, PretrainRun, check_writable_target, reading_artifact
from tftune.run_lock import exclusive_output, holds_output_lock
from tftune.schedules import DiscriminativeAdam, discriminative_multipliers
from tftune.run_setup import (
    RESUME_HINT,
    check_encoder_matches,
    check_same_data,
    chief_verbosity,
    distribution_summary,
    log,
    log_written,
    open_checkpoint,
    set_precision,
    start_distribution,
    worker_failures,
)
from tftune.unfreezing import StagePosition, describe_plan, fit_unfreezing_stages, member_stages, stage_learning_rate

# ULMFiT's Adam betas for fine-tuning.
ADAM_BETAS = {"beta_1": 0.7, "beta_2": 0.99}


def finetune(recipe: Recipe, from_run, out, data: LabeledData, force=False, callbacks=(), resume=False, strategy=None):
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
            not be, hold or lie inside anything the run reads (see `tftune.output_paths.check_run_paths`).
        data: the labeled examples (`tftune.inputs.LabeledData`); their fingerprints go into
            `run.json`, and a resumed run refuses other data.
        force: replace an existing non-empty `out`.
        callbacks: extra Keras callbacks for every `fit` call.
        resume: continue an interrupted run of the same recipe and runs from its checkpoint
            (in the member, stage, epoch and step where it stopped).
        strategy: the `tf.distribute` strategy to train under; default: the recipe's
            `[distribute]` one (see `tftune.pretraining.pretrain`). Only the chief writes `out`.

    Returns:
        The metrics written to `metrics.json`.
    """
    from_runs = [resolve_run(path) for path in ([from_run] if isinstance(from_run, (str, Path)) else from_run)]
    strategy = start_distribution(recipe, strategy, resume, "finetune.batch_size")
    check_run_paths(recipe, out, from_runs, resume, data.files())
    with distribute.chief_output(out, strategy) as target, worker_failures(strategy), global_policy_restored():
        return _finetune(recipe, from_runs, target, data, force, callbacks, resume, strategy)


@holds_output_lock
def _finetune(recipe, from_runs, out, data, force, callbacks, resume, strategy):
    started = time.time()
    checkpoint = RunCheckpoint(out)
    resumed = open_checkpoint(checkpoint, "finetune", recipe, resume, force, from_run=[str(path) for path in from_runs])
    fingerprints = check_same_data(data, resumed)
    members = open_members(recipe, from_runs)
    keras.utils.set_random_seed(recipe.finetune.seed)
    task = prepare_task(recipe, members, data)
    policy = set_precision(recipe.precision.policy)
    log(distribute.describe(strategy))
    log(f"precision policy: {policy}")
    progress = FinetuneProgress(checkpoint, recipe, from_runs, resumed, fingerprints)
    trained = train_members(recipe, members, task, progress, callbacks, strategy)
    model, metrics, history = evaluate_members(recipe, members, trained, task)
    metrics.update(precision_policy=policy, distribute=distribution_summary(strategy),
                   wall_seconds=round(time.time() - started, 1))
    write_finetune_run(out, force, recipe, members, task, model, history, metrics, checkpoint, fingerprints)
    log_written("finetune", out, strategy)
    return metrics


# === Stage 1: the pretrain runs and the task ===


def open_members(recipe, from_runs):
    """The pretrain runs, checked against the recipe and each other before anything trains."""
    members = [PretrainRun.open(path) for path in from_runs]
    for pretrained in members:
        check_encoder_matches(recipe, pretrained)
        classifier_dropouts(recipe, pretrained)  # a dropout_scale that takes a rate to 1 fails before training
    check_same_vocabulary(members)
    return members


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


# === Stage 2: fit each member ===


@dataclasses.dataclass
class TrainedMember:
    """One fine-tuned classifier, with what its training recorded."""

    classifier: keras.Model
    history: list
    best: KeepBestWeights


@dataclasses.dataclass
class FinetuneProgress:
    """What a finetune run's checkpoint holds besides the classifier in training and its plugins.

    Attributes:
        checkpoint: the run's `RunCheckpoint`.
        recipe: the run's recipe.
        from_runs: the pretrain runs, one per member.
        resumed: the state to resume from, or None.
        inputs: the fingerprints of the run's data (`tftune.inputs`).
        finished: the members already trained (`TrainedMember`s).
    """

    checkpoint: RunCheckpoint
    recipe: Recipe
    from_runs: list
    resumed: dict | None
    inputs: dict | None = None
    finished: list = dataclasses.field(default_factory=list)

    def resumed_member(self, index):
        """The saved state of member `index` when the run resumes inside it."""
        if self.resumed is not None and self.resumed["member"] == index:
            return self.resumed
        return None

    def state(self, member, epochs_done, steps_done):
        return {
            "kind": "finetune",
            "recipe": self.recipe.to_toml(),
            "from_run": [str(path) for path in self.from_runs],
            "inputs": self.inputs,
            "member": member,
            "epochs_done": epochs_done,
            "steps_done": steps_done,
            "finished": [{"history": done.history, "best": done.best.get_state()} for done in self.finished],
        }

    def arrays(self):
        return {f"member_{index}": done.classifier.get_weights() for index, done in enumerate(self.finished)}


def member_names(directions):
    """Model names of the ensemble members: by direction, numbered when a direction repeats."""
    if len(directions) == 1:
        return ["classifier"]
    if len(set(directions)) == len(directions):
        return [f"classifier_{direction}" for direction in directions]
    return [f"classifier_{number}" for number in range(1, len(directions) + 1)]


def train_members(recipe, members, task, progress, callbacks, strategy):
    """Fine-tunes one classifier per pretrain run, in order; a resumed run rebuilds the finished ones."""
    names = member_names([pretrained.recipe.pretrain.direction for pretrained in members])
    plans = [member_stages(recipe.finetune, pretrained.recipe.encoder.layers) for pretrained in members]
    for name, stages in zip(names, plans):
        log(f"{name} plan: {describe_plan(stages, recipe.finetune)}")
    epochs = [sum(stage.epochs for stage in stages) for stages in plans]
    run_progress = RunProgress(total_epochs=sum(epochs))
    log(f"live curves: tensorboard --logdir {progress.checkpoint.logs} (moved into the run when it is written)")
    resumed = progress.resumed
    if resumed:
        log(f"resuming {names[resumed['member']]} after epoch {resumed['epochs_done']}, step {resumed['steps_done']}")
        for index, done in enumerate(resumed["finished"]):
            with strategy.scope():
                classifier = build_member_classifier(recipe, members[index], names[index], len(task.labels), task.opened)
                classifier.set_weights(progress.checkpoint.load_arrays(f"member_{index}"))
            best = KeepBestWeights(recipe.finetune.patience)
            best.set_state(done["best"])
            progress.finished.append(TrainedMember(classifier, done["history"], best))
    for index in range(len(progress.finished), len(members)):
        run_progress.epoch_offset = sum(epochs[:index])
        progress.finished.append(
            finetune_member(recipe, members[index], names[index], task, progress, [*callbacks, run_progress], strategy)
        )
    return progress.finished


def classifier_dropouts(recipe, pretrained):
    """The pretrain run's encoder dropout rates times `finetune.dropout_scale`: see `encoder_dropouts`."""
    return encoder_dropouts(pretrained.recipe.encoder, recipe.finetune.dropout_scale)


def build_member_classifier(recipe, pretrained, name, n_classes, opened=None):
    """A classifier on `pretrained`'s encoder (weights restored), shaped by the recipe's head.

    With `opened` (an `OpenedVocabulary`), the encoder's embedding also holds the added words.
    """
    rates, _ = classifier_dropouts(recipe, pretrained)
    with reading_artifact(pretrained.backbone_weights):
        backbone = TextBackbone.from_preset(pretrained.path, **rates)
    if opened is not None and opened.added:
        backbone = grow_encoder(backbone, opened.vectors, opened.added)
    preprocessor = TextPreprocessor(opened.vocab if opened is not None else pretrained.vocab,
                                    lowercase=pretrained.tokenizer.lowercase, max_len=recipe.finetune.max_len)
    return TextClassifier(backbone, **classifier_config(recipe, pretrained.recipe, n_classes, name),
                          preprocessor=preprocessor)


def build_finetune_optimizer(classifier, settings):
    """One `DiscriminativeAdam` for every stage, built on every variable that will ever train.

    Keeping one optimizer keeps Adam's moments of the layers that already train when the next
    layer is unfrozen; each stage then only sets a fresh learning-rate cycle.
    """
    layers = classifier.backbone.recurrent_layers
    for layer in layers:
        layer.trainable = True
    optimizer = DiscriminativeAdam(
        # Of the same kind as every stage's (a schedule or a float), so the optimizer's variables,
        # and so its checkpoints, have the same layout whichever stage they were written in.
        stage_learning_rate(settings, 0, 1),
        multipliers=discriminative_multipliers([layer.name for layer in layers], settings.lr_decay),
        **ADAM_BETAS,
    )
    optimizer.build(classifier.trainable_variables)
    return optimizer


def finetune_member(recipe, pretrained, name, task, progress, callbacks=(), strategy=None):
    """Builds a classifier on a pretrained encoder and trains it with gradual unfreezing.

    Args:
        recipe: the resolved recipe (its `finetune` section is used).
        pretrained: the `tftune.runs.PretrainRun` whose encoder the classifier starts from.
        name: the classifier's model name.
        task: the `LabeledTask`.
        progress: the run's `FinetuneProgress` (checkpoints, resume, earlier members).
        callbacks: extra Keras callbacks for every `fit` call.
        strategy: the `tf.distribute` strategy to train under (default: the current one).

    Returns:
        A `TrainedMember` holding the weights of the best (or last) epoch.
    """
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    settings, index = recipe.finetune, len(progress.finished)
    with strategy.scope():
        classifier = build_member_classifier(recipe, pretrained, name, len(task.labels), task.opened)
        optimizer = build_finetune_optimizer(classifier, settings)
    history, best, position = StageHistory(), KeepBestWeights(settings.patience), StagePosition()
    restore = None
    resumed = progress.resumed_member(index)
    if resumed:
        restore_plugins([history, best, position], resumed, progress.checkpoint.load_arrays)
        position.resume_at(resumed["epochs_done"], resumed["steps_done"])
        restore = progress.checkpoint.restore
    saver = Checkpointing(
        progress.checkpoint, lambda epochs, steps: progress.state(index, epochs, steps), [history, best, position],
        settings.checkpoint_every, resume_hint=RESUME_HINT, arrays=progress.arrays,
    )
    if not best.stopped:
        fit_unfreezing_stages(
            classifier, optimizer, member_stages(settings, pretrained.recipe.encoder.layers), task.data["train"],
            lambda number, start, steps: stage_learning_rate(settings, start, steps, stage=number),
            validation_data=task.data["valid"], class_weight=task.data["class_weight"],
            # Best weights and a finite loss are checked before the epoch's checkpoint is written.
            callbacks=[history, best, StopOnNonFiniteLoss(), tensorboard(progress.checkpoint.logs / name), saver,
                       *callbacks],
            position=position, restore=restore, strategy=strategy, verbose=chief_verbosity(strategy),
        )
    if best.stopped:
        log(f"no better validation accuracy for {settings.patience} epoch(s): stopping")
    if settings.restore_best:
        best.restore(classifier)
        log(f"{name}: kept the weights of epoch {best.best_epoch} (validation accuracy {best.best_accuracy:.4f})")
    return TrainedMember(classifier, history.epochs, best)


# === Stage 3: evaluate ===


def predict_dataset(model, dataset):
    """Predicted and true class indices over a `(ids, label)` dataset."""
    predicted, true = [], []
    for ids, labels in dataset:
        predicted.append(np.argmax(model(ids, training=False), axis=-1))
        true.append(labels.numpy())
    return np.concatenate(true), np.concatenate(predicted)


def scores(model, task):
    """Validation (and test) metrics of a classifier or ensemble."""
    result = {"valid": classification_metrics(*predict_dataset(model, task.data["valid"]), task.labels)}
    if task.test_data is not None:
        result["test"] = classification_metrics(*predict_dataset(model, task.test_data), task.labels)
    return result


def training_summary(member, restore_best):
    """What `metrics.json` records of one member's training."""
    return {
        "epochs": len(member.history),
        "best_epoch": member.best.best_epoch,
        "weights_from_epoch": member.best.best_epoch if restore_best else len(member.history),
        "stopped_early": member.best.stopped,
    }


def evaluate_members(recipe, members, trained, task):
    """`(the model to export, its metrics, the history)`: the one classifier, or the members' ensemble."""
    restore_best = recipe.finetune.restore_best
    if len(trained) == 1:
        model = trained[0].classifier
        metrics = {**scores(model, task), **training_summary(trained[0], restore_best)}
        history = trained[0].history
    else:
        model = ClassifierEnsemble([member.classifier for member in trained])
        metrics = {**scores(model, task), "members": [
            {"name": member.classifier.name, "pretrain_run": str(pretrained.path),
             "direction": member.classifier.direction, **scores(member.classifier, task),
             **training_summary(member, restore_best)}
            for pretrained, member in zip(members, trained)
        ]}
        history = [{"member": member.classifier.name, **epoch} for member in trained for epoch in member.history]
    if task.opened.growth is not None:
        metrics["open_vocabulary"] = dataclasses.asdict(task.opened.growth)
    summary = f"valid accuracy {metrics['valid']['accuracy']:.4f}"
    if "test" in metrics:
        summary += f", test accuracy {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f}"
    log(summary)
    return model, metrics, history


# === Stage 4: write ===


def write_finetune_run(out, force, recipe, members, task, model, history, metrics, checkpoint, inputs):
    """Writes the finetune run whole: the classifier's config and weights, its export, history and logs;
    then removes its checkpoint."""
    classifiers = ensemble_members(model)
    with FinetuneRun.create(out, force, checkpoint) as run:
        run.write_info(
            task.opened.vocab, task.tokenizer, members[0].embedding_dim,
            pretrain_run=str(members[0].path), inputs=inputs,
            members=[{"name": classifier.name, "pretrain_run": str(pretrained.path), "direction": classifier.direction}
                     for classifier, pretrained in zip(classifiers, members)],
        )
        run.write_recipe(recipe)
        run.write_labels(task.labels)
        run.save_model(model)
        run.write_history(history)
        run.adopt_logs(checkpoint.logs)
        export_classifier(model, task.labels, run.export)
        run.write_metrics(metrics)


def reexport(run_dir, out, force=False):
    """Exports a finetune run's classifier again (e.g. to another directory).

    Args:
        run_dir: the finetune run.
        out: the export directory; `run_dir/export`, or a place outside the run (see
            `tftune.output_paths.check_export_paths`).
        force: replace an existing non-empty `out`.
    """
    check_export_paths(run_dir, out)
    check_writable_target(out, force, replaces="export")
    run = FinetuneRun.open(run_dir)
    classifier = run.load_model()  # a damaged file is named in one line
    with exclusive_output(out, force, replaces="export"):  # also cleans up what a stopped export left
        return export_classifier(classifier, run.labels(), out)

