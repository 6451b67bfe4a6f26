"""The `tftune` command line: a thin shell over the Python API.

Errors caused by the input print one line (`error: ...`) on stderr and exit with status 2;
unexpected failures print one line and exit with status 1 (set `TFTUNE_DEBUG=1` to see the
traceback).
"""

import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from tftune.distribute import STRATEGIES
from tftune.embeddings import FORMATS
from tftune.errors import DataError, EncodingError, TftuneError, WriteError, has_undecodable_bytes, printable
from tftune.quiet_import import import_tensorflow_quietly
from tftune.recipe import LOCAL_DISTRIBUTE



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
            _error(e.fixed_by(fix))
            ctx.exit(e.exit_code)
        except TftuneError as e:
            _error(str(e))
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            _error("interrupted; nothing was written")
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`tftune predict ... | head -1`): stop quietly, as a process
            # killed by SIGPIPE would, and keep Python's exit-time flush from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except click.UsageError as e:  # click's own form takes four lines
            command = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _error(f"{e.format_message()} (see {command} --help)")
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence for users
            if os.environ.get("TFTUNE_DEBUG"):
                raise
            from tftune.staging import write_failure

            reason = write_failure(e)
            if reason is not None:  # e.g. a read-only folder, or an export outside a run directory
                _error(f"{_refused_folder(e)}writing the output failed ({reason}); nothing was written")
                ctx.exit(1)
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(
                f"internal error: {type(e).__name__}: {printable(message)} (set TFTUNE_DEBUG=1 for details)",
                err=True,
            )
            ctx.exit(1)


def _refused_folder(error):
    """`FOLDER: ` for the folder that a refused write (an OSError in `error`'s chain) was in, else ""."""
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return f"{Path(os.fsdecode(error.filename)).parent}: "
        error = error.__cause__ or error.__context__
    return ""


# What a shell reports for a process killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def _error(message):
    """The one `error:` line, whatever file names or labels the message quotes."""
    click.echo(f"error: {printable(message)}", err=True)


def _overrides(pairs, settings):
    """`(section.key, value)` pairs for the flags that were given, then the --set strings."""
    return [(key, value) for key, value in pairs if value is not None and value != []] + list(settings)


def _given_out(ctx, param, value):
    """Refuses an empty --out (an unset shell variable), which would otherwise mean the default folder."""
    if value is not None and not value.strip():
        raise DataError("--out is empty; give a directory (an unset shell variable?), or leave --out out for the default")
    return value


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
max_memory_option = click.option(
    "--max-memory", metavar="SIZE", help="Refuse a recipe whose estimated peak training memory is above SIZE "
    "(e.g. 8G, 512M) [default: the machine's memory].")
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


def _check_memory(resolved, kind, max_memory, base_run=None):
    """Refuses a recipe whose estimated training memory is above --max-memory or the machine's, before any work."""
    from tftune.embeddings import vector_size
    from tftune.resources import check_fits, parse_size

    limit = parse_size(max_memory) if max_memory is not None else None
    vocab_size, dim = None, vector_size(resolved.embeddings.path, resolved.embeddings.format)
    if base_run is not None:
        vocab_size, dim = base_run.vocab_size(), base_run.info.get("embedding_dim")
    check_fits(resolved, kind, limit, vocab_size, dim)


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
    import_tensorflow_quietly()
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
    from tftune.errors import RunError

    if out is None:
        raise RunError("--resume needs the --out of the interrupted run")
    import_tensorflow_quietly()  # tftune.checkpoints imports Keras
    from tftune.checkpoints import RunCheckpoint

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
@click.option("--out", metavar="DIR", callback=_given_out, help="Run directory to create [default: runs/RECIPE-pretrain].")
@recipe_encoding_option
@distribute_option
@set_option
@force_option
@resume_option
@max_memory_option
def pretrain(recipe, corpus, valid, from_run, embeddings, embeddings_format, out, encoding, distribute, settings, force,
             resume, max_memory):
    """Pretrain the encoder as a next-token language model.

    With --from, training continues from an existing pretrain run (ULMFiT's target-domain
    step); without --recipe, that run's own recipe is used. With --resume (and the same --out),
    an interrupted run continues from its last checkpoint, with the recipe it started with.
    With --distribute multi-worker, start the same command on every machine, each with its own
    TF_CONFIG; only the chief writes --out.
    """
    from tftune.data import check_data_files
    from tftune.pretrained_models import resolve_run
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
        check_data_files([*resolved.pretrain.corpus, *filter(None, [resolved.pretrain.valid])])
    _check_memory(resolved, "pretrain", max_memory, run if from_run is not None else None)
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
@click.option("--out", metavar="DIR", callback=_given_out, help="Run directory to create [default: runs/RECIPE-finetune].")
@recipe_encoding_option
@distribute_option
@set_option
@force_option
@resume_option
@max_memory_option
def finetune(from_runs, recipe, train, valid, test, text_column, label_column, out, encoding, distribute, settings,
             force, resume, max_memory):
    """Fine-tune a pretrained encoder as a classifier, and export it.

    Without --recipe, the (first) pretrain run's own recipe is used (its [finetune] section).
    With several --from runs, each gets its own classifier and the export averages their
    probabilities. --distribute works as for pretrain.
    """
    from tftune.data import LABELED_SUFFIXES, check_data_files
    from tftune.pretrained_models import resolve_run
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
        splits = (resolved.finetune.train, resolved.finetune.valid, resolved.finetune.test)
        check_data_files(filter(None, splits), LABELED_SUFFIXES)
    _check_memory(resolved, "finetune", max_memory, from_runs[0])
    strategy = _start_strategy(resolved)
    from tftune.finetuning import finetune as run_finetune

    run_finetune(resolved, [run.path for run in from_runs], out, force=force, resume=resume, strategy=strategy)
    click.echo(FinetuneRun(out).export)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", metavar="DIR", callback=_given_out, help="Export directory [default: RUN_DIR/export].")
@force_option
def export(run_dir, out, force):
    """Export a finetune run as a SavedModel that serves raw strings."""
    from tftune.runs import FinetuneRun, check_export_paths
    from tftune.staging import write_failure

    out = Path(out or FinetuneRun(run_dir).export)
    check_export_paths(run_dir, out)
    import_tensorflow_quietly()
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
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", metavar="DIR", callback=_given_out, help="The converted run's directory.")
@click.option("--in-place", is_flag=True, help="Replace RUN_DIR by its conversion (staged, then swapped in whole).")
def convert(run_dir, out, in_place):
    """Convert a run of run format 1 to format 2 (its model as preset files), keeping its weights."""
    import_tensorflow_quietly()
    from tftune.convert import convert_run

    click.echo(convert_run(run_dir, out, in_place))


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
    import_tensorflow_quietly()
    from tftune.export import evaluate_export

    with _reading_export(model):
        metrics = evaluate_export(model, texts, labels, source=data)
    if plot is not None:
        from tftune.metrics import plot_metrics

        try:
            plot_metrics(metrics, list(metrics["per_class"]), plot, f"{Path(model).name} on {Path(data).name}")
        except OSError as e:
            raise WriteError(f"{plot}: writing the plot failed ({e.strerror or e}); nothing was written") from e
        # stdout stays one JSON object (for jq and the like); the file written goes to the log.
        logging.getLogger("tftune.cli").info(f"plot written to {plot}")
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
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--test", "data", required=True, metavar="PATH", help="Labeled data (.csv/.tsv/.jsonl).")
@click.option("--out", metavar="DIR", help="Folder to write the report to [default: RUN_DIR-interpret].")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0), help="Highest-loss texts to list.")
@click.option("--plot/--no-plot", default=None,
              help="Draw the training curves into DIR/curves.png (needs matplotlib: pip install 'tftune[plot]') "
                   "[default: when matplotlib is installed].")
@click.option("--text-column", default="text", show_default=True, help="Text column or key.")
@click.option("--label-column", default="label", show_default=True, help="Label column or key.")
@force_option
@encoding_option
def interpret(run_dir, data, out, top, plot, text_column, label_column, force, encoding):
    """What a finetune run's classifier gets wrong on labeled data, and how it trained.

    Writes DIR/report.json (per-class precision, recall and F1, the confusion matrix and its
    labels, the most confused pairs, the highest-loss texts), DIR/top_losses.csv and
    DIR/curves.png (loss and accuracy per epoch, unfreezing stages marked), and prints their paths.
    """
    from tftune.data import read_labeled
    from tftune.interpretation import PLOT_MISSING, check_report_paths, matplotlib_available
    from tftune.metrics import check_known_labels
    from tftune.runs import FinetuneRun

    run = FinetuneRun.open(run_dir)
    named = Path(run_dir) if Path(run_dir).name not in ("", "..") else Path(run_dir).resolve()  # "." has no name
    out = Path(out or named.with_name(f"{named.name}-interpret"))
    check_report_paths(run_dir, out, force, data)
    if plot and not matplotlib_available():
        raise DataError(f"--plot {PLOT_MISSING}")
    texts, labels = read_labeled(data, text_column, label_column, encoding=encoding)
    check_known_labels(labels, run.labels(), data)
    import_tensorflow_quietly()
    from tftune.interpretation import interpret_run

    report = interpret_run(run_dir, texts, labels, out, top=top, plot=plot, force=force, data_file=data)
    for path in report["files"]:
        click.echo(path)


@main.command()
@click.argument("model", metavar="RUN_OR_EXPORT")
@click.argument("texts", nargs=-1, metavar="TEXT...")
@click.option("--encoding", default="utf-8", show_default=True, metavar="NAME", callback=_check_encoding,
              help="Text encoding of standard input, and of TEXT arguments that are not valid UTF-8 "
                   "(a Python codec name: latin-1, cp1252, utf-16...).")
@click.option("--format", "output_format", type=click.Choice(["tsv", "jsonl"]), default="tsv", show_default=True,
              help="tsv: `label<TAB>probability` lines; jsonl: one JSON object per text with its index, label "
                   "and the probability of every class.")
def predict(model, texts, encoding, output_format):
    """Classify texts with an exported model: one line per text, in order.

    With no TEXT, or with `-`, texts are read from standard input, one per line.
    """
    if not texts or texts == ("-",):
        from tftune.data import read_stream_lines

        if sys.stdin is None:  # started with standard input closed (`<&-`)
            raise DataError("standard input is closed; give the texts as arguments, or pipe them in one per line")
        texts = read_stream_lines(sys.stdin.buffer, "standard input", encoding)
    else:
        texts = [_argument_text(text, number, encoding) for number, text in enumerate(texts, start=1)]
    import_tensorflow_quietly()
    from tftune.export import Predictor

    with _reading_export(model):
        predictor = Predictor(model)
        labels, probabilities = predictor.predict(list(texts))
    for index, (label, row) in enumerate(zip(labels, probabilities)):
        if output_format == "jsonl":
            by_class = {name: round(float(p), 6) for name, p in zip(predictor.labels, row)}
            click.echo(json.dumps({"index": index, "label": label, "probabilities": by_class}, ensure_ascii=False))
        else:  # printable: a label of an older export may hold a line break
            click.echo(f"{printable(label)}\t{row.max():.4f}")


@contextlib.contextmanager
def _reading_export(model):
    """Names the export in one line when its SavedModel cannot be read (a file truncated or damaged).

    TensorFlow logs a traceback when it cannot read `fingerprint.pb`, and then loads the model
    anyway; that file only identifies the model, so its log stays off the terminal.
    """
    from tftune.export import find_export
    from tftune.runs import reading_artifact

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        with reading_artifact(find_export(model)):
            yield
    finally:
        absl.setLevel(level)


def _argument_text(text, number, encoding):
    """A TEXT argument whose bytes are not valid UTF-8, decoded in --encoding (or a one-line error)."""
    if not has_undecodable_bytes(text):
        return text
    from tftune.data import decode_text

    return decode_text(os.fsencode(text), f"TEXT argument {number}", encoding)


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
    from tftune.pretrained_models import list_presets

    click.echo("name\tsize\ttrain tokens\tperplexity\tmodel and corpus")
    for preset in list_presets():
        tokens = f"{preset.train_tokens:,}" if preset.train_tokens is not None else "?"
        perplexity = f"{preset.perplexity:.1f}" if preset.perplexity is not None else "?"
        size = f"{preset.size_bytes / 1e6:.1f} MB"
        click.echo(f"{preset.name}\t{size}\t{tokens}\t{perplexity}\t{preset.description}")


if __name__ == "__main__":
    main()
