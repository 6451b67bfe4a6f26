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
from tftune.errors import DataError, EncodingError, TftuneError, has_undecodable_bytes, printable



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


@main.command()
@recipe_option
@click.option("--corpus", multiple=True, metavar="PATH", help="Unlabeled text: .txt (one document per line), or the text column of .csv/.tsv/.jsonl (repeatable).")
@click.option("--valid", metavar="PATH", help="Held-out text to measure perplexity on (same file types as --corpus) "
                                             "[default: the last pretrain.valid_fraction of the corpus].")
@click.option("--from", "from_run", metavar="PRETRAIN_RUN", help="Continue language-model training of this pretrain run (a directory, or a shipped model's name: `tftune pretrained list`) on --corpus, e.g. the task's own text.")
@click.option("--bidirectional", is_flag=True, help="Continue --from and its backward partner (or both directions "
              "of a bidirectional run) on --corpus, and write both as one run for `finetune --from`.")
@click.option("--embeddings", metavar="PATH", help="Pretrained vectors file (overrides embeddings.path).")
@click.option("--embeddings-format", type=click.Choice(FORMATS), help="Format of --embeddings.")
@click.option("--out", metavar="DIR", callback=_given_out, help="Run directory to create [default: runs/RECIPE-pretrain].")
@encoding_option
@distribute_option
@set_option
@force_option
@resume_option
@max_memory_option
def pretrain(recipe, corpus, valid, from_run, bidirectional, embeddings, embeddings_format, out, encoding, distribute,
             settings, force, resume, max_memory):
    """Pretrain the encoder as a next-token language model.

    With --from, training continues from an existing pretrain run (ULMFiT's target-domain
    step); without --recipe, that run's own recipe is used. With --resume (and the same --out),
    an interrupted run continues from its last checkpoint, with the recipe it started with.
    With --distribute multi-worker, start the same command on every machine, each with its own
    TF_CONFIG; only the chief writes --out. With --bidirectional, both directions train
    one after the other into one run, OUT/forward and OUT/backward, published together.
    """
    from tftune import api

    flags = [("embeddings.path", embeddings), ("embeddings.format", embeddings_format), *_distribute_flags(distribute)]
    plan_for, run = (api.plan_bidirectional, api.run_bidirectional) if bidirectional else (api.plan_pretrain,
                                                                                          api.run_plan)
    plan = plan_for(
        [Path(path) for path in corpus] or None, valid=valid, out=out, from_run=from_run, recipe=recipe,
        settings=_overrides(flags, settings), force=force, resume=resume, encoding=encoding, max_memory=max_memory,
    )
    run(plan)
    click.echo(plan.out)


@main.command()
@click.option("--from", "from_runs", required=True, multiple=True, metavar="PRETRAIN_RUN",
              help="A pretrain run directory or a shipped model's name (`tftune pretrained list`); give it twice "
                   "(e.g. a forward and a backward run), or a bidirectional run, for an ensemble.")
@recipe_option
@click.option("--train", metavar="PATH", help="Labeled training data (.csv/.tsv/.jsonl); required, except with "
                                             "--resume (the interrupted run's files are read again).")
@click.option("--valid", metavar="PATH", help="Labeled validation data [default: hold out part of --train].")
@click.option("--test", metavar="PATH", help="Labeled test data, evaluated once at the end.")
@click.option("--text-column", default="text", show_default=True, metavar="NAME", help="Text column or key.")
@click.option("--label-column", default="label", show_default=True, metavar="NAME", help="Label column or key.")
@click.option("--out", metavar="DIR", callback=_given_out, help="Run directory to create [default: runs/RECIPE-finetune].")
@encoding_option
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
    from tftune import api
    from tftune.runs import FinetuneRun

    plan = api.plan_finetune(
        from_runs, train, out=out, valid=valid, test=test, recipe=recipe,
        settings=_overrides(_distribute_flags(distribute), settings), text_column=text_column,
        label_column=label_column, encoding=encoding, force=force, resume=resume, max_memory=max_memory,
    )
    api.run_plan(plan)
    click.echo(FinetuneRun(plan.out).export)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", metavar="DIR", callback=_given_out, help="Export directory [default: RUN_DIR/export].")
@force_option
def export(run_dir, out, force):
    """Export a finetune run as a SavedModel that serves raw strings."""
    from tftune import api

    click.echo(api.export(run_dir, out, force=force))


@main.command()
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", metavar="DIR", required=True, callback=_given_out,
              help="The converted run's directory (a new one: never RUN_DIR, inside it or holding it).")
@force_option
def convert(run_dir, out, force):
    """Convert a run of run format 1 to format 2 (its model as preset files), keeping its weights.

    RUN_DIR itself is never changed.
    """
    from tftune import api

    click.echo(api.convert(run_dir, out, force=force))


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
    from tftune import api

    metrics = api.evaluate(model, data, text_column=text_column, label_column=label_column, encoding=encoding,
                           plot=plot, force=force)
    # stdout stays one JSON object (for jq and the like); a plot written goes to the log.
    click.echo(json.dumps(metrics, indent=2))


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
    from tftune import api

    named = Path(run_dir) if Path(run_dir).name not in ("", "..") else Path(run_dir).resolve()  # "." has no name
    out = Path(out or named.with_name(f"{named.name}-interpret"))
    report = api.interpret(run_dir, data, out, top=top, plot=plot, force=force, text_column=text_column,
                           label_column=label_column, encoding=encoding)
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
    from tftune import api

    predictor = api.predictor(model)
    labels, probabilities = predictor.predict(list(texts))
    for index, (label, row) in enumerate(zip(labels, probabilities)):
        if output_format == "jsonl":
            by_class = {name: round(float(p), 6) for name, p in zip(predictor.labels, row)}
            click.echo(json.dumps({"index": index, "label": label, "probabilities": by_class}, ensure_ascii=False))
        else:  # printable: a label of an older export may hold a line break
            click.echo(f"{printable(label)}\t{row.max():.4f}")


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
