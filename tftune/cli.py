"""The `tftune` command line: a thin shell over the Python API.

Errors caused by the input print one line (`error: ...`) on stderr and exit with status 2;
unexpected failures print one line and exit with status 1 (set `TFTUNE_DEBUG=1` to see the
traceback).
"""

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from tftune.distribute import STRATEGIES
from tftune.embeddings import FORMATS
from tftune.errors import DataError, EncodingError, TftuneError, WriteError
from tftune.recipe import LOCAL_DISTRIBUTE



def _import_tensorflow_quietly():
    """TensorFlow prints CPU/CUDA notices at import; keep the terminal for our own messages."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or os.environ.get("TFTUNE_DEBUG"):
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class _CurrentStderr(logging.StreamHandler):
    """A `StreamHandler` on `sys.stderr` as it is at each record, not at set-up (a test runner may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):  # StreamHandler.__init__ assigns one; the property always answers sys.stderr
        pass


def configure_logging():
    """Shows the `tftune` logger's INFO lines on stderr as `tftune: ...` (once per process).

    The library only logs; the command line (and `python -m bench`) decide where it goes. In a
    notebook, `logging.getLogger("tftune").setLevel(logging.INFO)` plus any handler does the same.
    """
    logger = logging.getLogger("tftune")
    if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("tftune: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # TensorFlow's absl handler on the root logger would print each line twice


class TftuneGroup(click.Group):
    """Turns known errors into one-line messages and exit codes instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EncodingError as e:
            if ctx.meta.get(_HAS_ENCODING_OPTION):
                fix = f"pass --encoding {e.suggestion}"
            else:
                fix = f"convert it to UTF-8 first ({ctx.invoked_subcommand} reads UTF-8 only)"
            click.echo(f"error: {e.fixed_by(fix)}", err=True)
            ctx.exit(e.exit_code)
        except TftuneError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence for users
            if os.environ.get("TFTUNE_DEBUG"):
                raise
            from tftune.staging import write_failure

            reason = write_failure(e)
            if reason is not None:  # e.g. an export outside a run directory; it cleans up after itself
                click.echo(f"error: writing the output failed ({reason}); nothing was written", err=True)
                ctx.exit(1)
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(
                f"internal error: {type(e).__name__}: {message} (set TFTUNE_DEBUG=1 for details)",
                err=True,
            )
            ctx.exit(1)


def _overrides(pairs, settings):
    """`(section.key, value)` pairs for the flags that were given, then the --set strings."""
    return [(key, value) for key, value in pairs if value is not None and value != []] + list(settings)


recipe_option = click.option(
    "--recipe", metavar="NAME|FILE", help="A shipped recipe name (see `tftune recipes list`) or a TOML file."
)
set_option = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a recipe field, e.g. --set encoder.units=128 (repeatable).",
)
force_option = click.option(
    "--force", is_flag=True, help="Replace an existing non-empty output directory (never one the command reads)."
)
_HAS_ENCODING_OPTION = "tftune.has_encoding_option"


def _check_encoding(ctx, param, value):
    """Validates --encoding, and lets error messages of this command suggest it."""
    from tftune.data import check_encoding

    ctx.meta[_HAS_ENCODING_OPTION] = True
    if value is None:  # an option without a default: the recipe decides
        return value
    try:
        check_encoding(value)
    except DataError as e:
        raise DataError(f"--encoding: {e}") from None
    return value


encoding_option = click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    metavar="NAME",
    callback=_check_encoding,
    help="Text encoding of the input files (a Python codec name: latin-1, cp1252, utf-16...).",
)
# For training commands the recipe holds the encoding (pretrain.encoding / finetune.encoding).
recipe_encoding_option = click.option(
    "--encoding",
    default=None,
    metavar="NAME",
    callback=_check_encoding,
    help="Text encoding of the input files, e.g. latin-1 [default: the recipe's, utf-8].",
)
resume_option = click.option(
    "--resume", is_flag=True, help="Continue an interrupted run of --out from its checkpoint (same recipe)."
)
distribute_option = click.option(
    "--distribute",
    type=click.Choice(STRATEGIES),
    help="Data-parallel training (overrides distribute.strategy): none = one device; mirrored = every local GPU; "
    "multi-worker = one process per machine, each with its own TF_CONFIG [default: the recipe's, none].",
)


def _distribute_flags(strategy):
    """The overrides of --distribute; a strategy other than mirrored takes no devices list."""
    if strategy is None:
        return []
    return [("distribute.strategy", strategy)] + ([("distribute.devices", "")] if strategy != "mirrored" else [])


def _check_distribution(resolved, resume):
    """What can be told from the recipe alone, before the slow TensorFlow import.

    Returns:
        Whether to check --out now. Not under multi-worker training: the chief checks it once
        every worker has joined the cluster, so that its error also stops the others (a process
        that ends before joining leaves them waiting for it), and the other workers never look.
    """
    from tftune import distribute
    from tftune.errors import RunError

    if resolved.distribute.strategy != "multi-worker":
        return True
    if resume:
        raise RunError(distribute.MULTI_WORKER_RESUME)
    return False


def _start_strategy(resolved):
    """Imports TensorFlow and creates the recipe's strategy before any other TensorFlow work
    (a multi-worker strategy must come first in the process)."""
    from tftune import distribute

    config = distribute.read_tf_config() if resolved.distribute.strategy == "multi-worker" else None
    if config is not None:
        logging.getLogger("tftune.cli").info(  # not __name__: `python -m tftune.cli` runs as __main__
            f"multi-worker: worker {config.worker_index} of {config.num_workers} "
            f"({config.task_type} {config.task_index}) waits for every worker to join the cluster"
        )
    _import_tensorflow_quietly()
    if config is None:
        return distribute.recipe_strategy(resolved)
    # Joining blocks inside TensorFlow, where Python never sees Ctrl-C or SIGTERM: let them end
    # the process outright until every worker is there (nothing is written before).
    previous = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return distribute.recipe_strategy(resolved)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@click.group(cls=TftuneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tftune")
def main():
    """ULMFiT-style transfer learning with Keras recurrent stacks on frozen GloVe/word2vec vectors.

    Typical flow: `tftune pretrain` (language model on unlabeled text), then `tftune finetune`
    (classifier with discriminative rates and a slanted triangular schedule; writes a SavedModel
    to RUN/export), then `tftune predict RUN "some text"`.
    """
    configure_logging()
    # SIGTERM (a `kill`, a timeout, a scheduler) stops tftune as Ctrl-C does, in every phase: training
    # writes its checkpoint, writing removes what it staged, and the message says what was kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _checkpoint_recipe(out):
    """The recipe file saved with the checkpoint of `--out`, for `--resume` without `--recipe`."""
    from tftune.checkpoints import RunCheckpoint
    from tftune.errors import RunError

    if out is None:
        raise RunError("--resume needs the --out of the interrupted run")
    checkpoint = RunCheckpoint(out)
    if not checkpoint.exists():
        raise RunError(f"{out}: no checkpoint to resume ({checkpoint.path} does not exist); run without --resume")
    return str(checkpoint.recipe_file)


@main.command()
@recipe_option
@click.option("--corpus", multiple=True, metavar="PATH", help="Unlabeled text: .txt (one document per line), or the text column of .csv/.tsv/.jsonl (repeatable).")
@click.option("--valid", metavar="PATH", help="Held-out text to measure perplexity on (same file types as --corpus) "
                                             "[default: the last pretrain.valid_fraction of the corpus].")
@click.option("--from", "from_run", metavar="PRETRAIN_RUN", help="Continue language-model training of this pretrain run (a directory, or a shipped model's name: `tftune pretrained list`) on --corpus, e.g. the task's own text.")
@click.option("--embeddings", metavar="PATH", help="Pretrained vectors file (overrides embeddings.path).")
@click.option("--embeddings-format", type=click.Choice(FORMATS), help="Format of --embeddings.")
@click.option("--out", metavar="DIR", help="Run directory to create [default: runs/RECIPE-pretrain].")
@recipe_encoding_option
@distribute_option
@set_option
@force_option
@resume_option
def pretrain(recipe, corpus, valid, from_run, embeddings, embeddings_format, out, encoding, distribute, settings, force,
             resume):
    """Pretrain the encoder as a next-token language model.

    With --from, training continues from an existing pretrain run (ULMFiT's target-domain
    step); without --recipe, that run's own recipe is used. With --resume (and the same --out),
    an interrupted run continues from its last checkpoint, with the recipe it started with.
    With --distribute multi-worker, start the same command on every machine, each with its own
    TF_CONFIG; only the chief writes --out.
    """
    from tftune.presets import resolve_run
    from tftune.recipe import load_recipe
    from tftune.runs import PretrainRun, check_run_paths, check_writable_target

    base = recipe
    reset = []
    if from_run is not None:
        # A wrong --from fails here, before the slow TensorFlow import.
        from_run = resolve_run(from_run)
        run = PretrainRun.open(from_run, require=() if recipe else ("recipe_file",))
        base = recipe or str(run.recipe_file)
        reset = [] if recipe else LOCAL_DISTRIBUTE
    if resume and not recipe:
        base, reset = _checkpoint_recipe(out), []
    resolved = load_recipe(
        base,
        [*reset, *_overrides(
            [
                ("pretrain.corpus", list(corpus)),
                ("pretrain.valid", valid),
                ("pretrain.encoding", encoding),
                ("embeddings.path", embeddings),
                ("embeddings.format", embeddings_format),
                *_distribute_flags(distribute),
            ],
            settings,
        )],
    )
    out = Path(out or f"runs/{resolved.name}-pretrain")
    if _check_distribution(resolved, resume):
        # Before the slow TensorFlow import; an --out over an input is refused even with --force.
        check_run_paths(resolved, "pretrain", out, [from_run] if from_run is not None else [], resume)
        check_writable_target(out, force, resume=resume)
    strategy = _start_strategy(resolved)
    from tftune.pretraining import pretrain as run_pretrain

    run_pretrain(resolved, out, force=force, from_run=from_run, resume=resume, strategy=strategy)
    click.echo(out)


@main.command()
@click.option("--from", "from_runs", required=True, multiple=True, metavar="PRETRAIN_RUN",
              help="A pretrain run directory or a shipped model's name (`tftune pretrained list`); give it twice "
                   "(e.g. a forward and a backward run) for an ensemble.")
@recipe_option
@click.option("--train", metavar="PATH", help="Labeled training data (.csv/.tsv/.jsonl).")
@click.option("--valid", metavar="PATH", help="Labeled validation data [default: hold out part of --train].")
@click.option("--test", metavar="PATH", help="Labeled test data, evaluated once at the end.")
@click.option("--text-column", metavar="NAME", help="Text column or key [default: text].")
@click.option("--label-column", metavar="NAME", help="Label column or key [default: label].")
@click.option("--out", metavar="DIR", help="Run directory to create [default: runs/RECIPE-finetune].")
@recipe_encoding_option
@distribute_option
@set_option
@force_option
@resume_option
def finetune(from_runs, recipe, train, valid, test, text_column, label_column, out, encoding, distribute, settings,
             force, resume):
    """Fine-tune a pretrained encoder as a classifier, and export it.

    Without --recipe, the (first) pretrain run's own recipe is used (its [finetune] section).
    With several --from runs, each gets its own classifier and the export averages their
    probabilities. --distribute works as for pretrain.
    """
    from tftune.presets import resolve_run
    from tftune.recipe import load_recipe
    from tftune.runs import FinetuneRun, PretrainRun, check_run_paths, check_writable_target

    # A wrong --from fails here, before the slow TensorFlow import; training checks the rest of the run.
    from_runs = [PretrainRun.open(resolve_run(from_run), require=() if recipe else ("recipe_file",))
                 for from_run in from_runs]
    base = recipe or (_checkpoint_recipe(out) if resume else str(from_runs[0].recipe_file))
    reset = LOCAL_DISTRIBUTE if not recipe and not resume else []
    flags = [
        ("finetune.encoding", encoding),
        ("finetune.train", train),
        ("finetune.valid", valid),
        ("finetune.test", test),
        ("finetune.text_column", text_column),
        ("finetune.label_column", label_column),
    ]
    if train and not valid:
        flags.append(("finetune.valid", ""))
    if train and not test:
        flags.append(("finetune.test", ""))
    flags += _distribute_flags(distribute)
    resolved = load_recipe(base, [*reset, *_overrides(flags, settings)])
    out = Path(out or f"runs/{resolved.name}-finetune")
    if _check_distribution(resolved, resume):
        check_run_paths(resolved, "finetune", out, [run.path for run in from_runs], resume)
        check_writable_target(out, force, resume=resume)
    strategy = _start_strategy(resolved)
    from tftune.finetuning import finetune as run_finetune

    run_finetune(resolved, [run.path for run in from_runs], out, force=force, resume=resume, strategy=strategy)
    click.echo(FinetuneRun(out).export)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", metavar="DIR", help="Export directory [default: RUN_DIR/export].")
@force_option
def export(run_dir, out, force):
    """Export a finetune run as a SavedModel that serves raw strings."""
    from tftune.runs import FinetuneRun, check_export_paths
    from tftune.staging import write_failure

    out = Path(out or FinetuneRun(run_dir).export)
    check_export_paths(run_dir, out)
    _import_tensorflow_quietly()
    from tftune.finetuning import reexport

    try:
        reexport(run_dir, out, force=force)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise WriteError(f"{out}: writing the export failed ({reason}); nothing was written") from e
    click.echo(out)


@main.command()
@click.argument("model", metavar="RUN_OR_EXPORT")
@click.option("--data", required=True, metavar="PATH", help="Labeled data (.csv/.tsv/.jsonl).")
@click.option("--text-column", default="text", show_default=True, help="Text column or key.")
@click.option("--label-column", default="label", show_default=True, help="Label column or key.")
@click.option("--plot", metavar="FILE.png", default=None,
              help="Also draw the confusion matrix and per-class scores into this PNG (needs matplotlib: "
                   "pip install 'tftune[plot]').")
@click.option("--force", is_flag=True, help="Replace an existing --plot file.")
@encoding_option
def evaluate(model, data, text_column, label_column, plot, force, encoding):
    """Evaluate an exported model on labeled data; prints a JSON object of metrics."""
    from tftune.data import read_labeled
    from tftune.runs import check_output_paths

    if plot is not None:
        check_output_paths([("--plot", plot)], [("evaluated model", model), ("--data file", data)])
        _check_plot_path(Path(plot), force)
    texts, labels = read_labeled(data, text_column, label_column, encoding=encoding)
    _import_tensorflow_quietly()
    from tftune.export import evaluate_export

    metrics = evaluate_export(model, texts, labels, source=data)
    if plot is not None:
        from tftune.metrics import plot_metrics

        try:
            plot_metrics(metrics, list(metrics["per_class"]), plot, f"{Path(model).name} on {Path(data).name}")
        except OSError as e:
            raise WriteError(f"{plot}: writing the plot failed ({e.strerror or e}); nothing was written") from e
    click.echo(json.dumps(metrics, indent=2))


def _check_plot_path(plot, force):
    """Refuse a --plot that cannot be written before any work is done."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DataError("--plot needs matplotlib, which is not installed: pip install 'tftune[plot]'") from None
    if plot.suffix.lower() != ".png":
        raise DataError(f"{plot}: --plot writes a PNG; give a file name ending in .png")
    if not plot.parent.is_dir():
        raise DataError(f"{plot}: directory {plot.parent} does not exist")
    if plot.is_dir():
        raise DataError(f"{plot}: is a directory")
    if plot.exists() and not force:
        raise DataError(f"{plot}: exists; choose another --plot or pass --force to replace it")


@main.command()
@click.argument("model", metavar="RUN_OR_EXPORT")
@click.argument("texts", nargs=-1, metavar="TEXT...")
@click.option("--encoding", default="utf-8", show_default=True, metavar="NAME", callback=_check_encoding,
              help="Text encoding of standard input (a Python codec name: latin-1, cp1252, utf-16...).")
def predict(model, texts, encoding):
    """Classify texts with an exported model: one `label<TAB>probability` line per text.

    With no TEXT, or with `-`, texts are read from standard input, one per line.
    """
    if not texts or texts == ("-",):
        from tftune.data import read_stream_lines

        texts = read_stream_lines(sys.stdin.buffer, "standard input", encoding)
    _import_tensorflow_quietly()
    from tftune.export import Predictor

    labels, probabilities = Predictor(model).predict(list(texts))
    for label, row in zip(labels, probabilities):
        click.echo(f"{label}\t{row.max():.4f}")


@main.group()
def embeddings():
    """Inspect pretrained vector files."""


@embeddings.command("inspect")
@click.argument("path", metavar="PATH")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="glove", show_default=True)
@click.option("--corpus", multiple=True, metavar="PATH", help="Report the coverage of this text (repeatable).")
@click.option("--lowercase/--no-lowercase", default=True, show_default=True, help="Lowercase the corpus first.")
@encoding_option
def inspect_embeddings(path, fmt, corpus, lowercase, encoding):
    """Size, dimension, and coverage of a corpus by a vectors file (JSON)."""
    from collections import Counter

    _import_tensorflow_quietly()  # tftune.text imports TensorFlow
    from tftune.data import read_corpus
    from tftune.embeddings import inspect_vectors
    from tftune.text import Tokenizer

    counts = None
    if corpus:
        tokenizer = Tokenizer(lowercase=lowercase)
        counts = Counter(token for doc in read_corpus(corpus, encoding=encoding) for token in tokenizer.tokenize(doc))
    click.echo(json.dumps(inspect_vectors(path, fmt, counts), indent=2))


@main.group()
def recipes():
    """List and show the shipped recipes."""


@recipes.command("list")
def list_recipes():
    """Names and descriptions of the shipped recipes."""
    from tftune.recipe import DEFAULT_RECIPE, list_recipes as names

    for name, description in names():
        marker = " (default)" if name == DEFAULT_RECIPE else ""
        click.echo(f"{name}{marker}\t{description}")


@recipes.command("show")
@click.argument("name", metavar="NAME|FILE")
@set_option
def show_recipe(name, settings):
    """Print a recipe, fully resolved, as TOML."""
    from tftune.recipe import load_recipe

    click.echo(load_recipe(name, list(settings)).to_toml(), nl=False)


@main.group()
def pretrained():
    """List the shipped pretrained language models (give a name to --from)."""


@pretrained.command("list")
def list_pretrained():
    """Name, size, corpus, tokens and held-out perplexity of each shipped language model."""
    from tftune.presets import list_presets

    click.echo("name\tsize\ttrain tokens\tperplexity\tmodel and corpus")
    for preset in list_presets():
        tokens = f"{preset.train_tokens:,}" if preset.train_tokens is not None else "?"
        perplexity = f"{preset.perplexity:.1f}" if preset.perplexity is not None else "?"
        size = f"{preset.size_bytes / 1e6:.1f} MB"
        click.echo(f"{preset.name}\t{size}\t{tokens}\t{perplexity}\t{preset.description}")


if __name__ == "__main__":
    main()
