"""Run directories: their format, and writing them in a temporary place, then moving them into place whole.

`PretrainRun` and `FinetuneRun` own the run-directory format: they alone know its file names,
and they read, write and check them. `run.json` records the format version (`FORMAT_VERSION`);
a run written by a newer tftune is refused in one line.

A run (pretrain or finetune) writes all its files into a hidden sibling directory and renames
it to `--out` only when everything succeeded, so a crash or a bad input never leaves a
half-written run that a later command could mistake for a complete one. An existing non-empty
`--out` is only replaced with `force=True`, and only once the new run is complete. No output
may be, hold or lie inside what the command reads (`tftune.output_paths`), `force` or not.
(`tftune.staging` publishes the folders; `tftune.run_lock` locks `--out` while it is written.)

Example:

>>> with PretrainRun.create("runs/pretrain", force=False) as run:  # doctest: +SKIP
...     run.write_info(vocab, tokenizer, embedding_dim=50)
...     run.save_model(language_model)
...     run.write_metrics({"valid": {"perplexity": 123.4}})
>>> PretrainRun.open("runs/pretrain").metrics()["valid"]["perplexity"]  # doctest: +SKIP
123.4
"""

import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

from tftune import models
from tftune.errors import RunError, TftuneError, WriteError
from tftune.output_paths import hidden_sibling
from tftune.staging import close_failed_h5_files, fault_point, replace_directory, write_failure

RUN_INFO = "run.json"
# What reading a truncated or overwritten file raises, in the standard library and beneath
# h5py, TensorFlow and protobuf (their errors are recognized by module, not imported here).
_DAMAGE_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError)
_DAMAGE_MODULES = ("h5py", "tensorflow", "google.protobuf")
_MAX_REASON = 160


@contextlib.contextmanager
def reading_artifact(path):
    """Turns a failure to read a file tftune wrote (a run's weights, an export) into one `RunError`
    that names `path`: it was truncated or overwritten after it was written.

    Example:

    >>> with reading_artifact(run.task_weights):  # doctest: +SKIP
    ...     classifier = run.load_model()
    tftune.errors.RunError: runs/clf/task.weights.h5: cannot be read; is it truncated or damaged? (...)
    """
    try:
        yield
    except TftuneError:
        raise
    except Exception as e:
        if not (isinstance(e, _DAMAGE_ERRORS) or type(e).__module__.startswith(_DAMAGE_MODULES)):
            raise
        if isinstance(e, FileNotFoundError):
            raise RunError(f"{path}: missing ({e.strerror}); the run or export is incomplete") from None
        reason = " ".join(str(e).split())
        path = _file_named_in(reason, Path(path))
        reason = reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."
        raise RunError(f"{path}: cannot be read; is it truncated or damaged? ({type(e).__name__}: {reason})") from None


def _file_named_in(message, folder):
    """The file inside `folder` (e.g. a SavedModel's saved_model.pb) that `message` names, else `folder`."""
    if not folder.is_dir():
        return folder
    named = [file for file in folder.rglob("*") if file.is_file() and str(file) in message]
    return max(named, key=lambda file: len(str(file)), default=folder)


def read_json(path):
    """The JSON a run or export holds at `path`; a `RunError` naming the file if it is damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunError(f"{path}: unreadable, is it truncated or damaged? ({' '.join(str(e).split())})") from None


# The file of a run's checkpoint (`tftune.checkpoints`) that makes it complete, and names its run.
CHECKPOINT_STATE = "state.json"


def checkpoint_published(out):
    """Whether the checkpoint beside `out` belongs to the run published at `out` (same `run_id`)."""
    try:
        state = json.loads((hidden_sibling(out, "checkpoint") / CHECKPOINT_STATE).read_text(encoding="utf-8"))
        info = json.loads((Path(out) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(info, dict) and state.get("run_id") is not None and (
        state.get("run_id") == info.get("checkpoint_run_id"))


# What `--force` may replace: only a folder that tftune wrote, known by the file it always holds.
_REPLACEABLE = {"run": (RUN_INFO, "tftune run"), "export": ("saved_model.pb", "SavedModel export"),
                "report": ("report.json", "tftune interpret report")}


def check_writable_target(out, force, replaces="run", resume=False):
    """Fails early (before any training) when `out` exists and would be overwritten.

    Even with `force`, only an earlier output of the same kind is replaced: a run directory for a
    run, a SavedModel for an export. A folder of anything else (e.g. a data folder, or the
    pretrain run given as `tftune export --out`) is the user's, and is refused.

    Args:
        out: the directory to write.
        force: replace an existing non-empty `out` of the same kind.
        replaces: `"run"`, `"export"` or `"report"`: what `out` must be to be replaced.
        resume: the run resumes from its checkpoint; `out` may then be the run published from that
            checkpoint by a process that stopped before removing it (the resume only cleans up).
    """
    out = Path(out)
    if resume and checkpoint_published(out):
        return
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not force:
        raise RunError(f"{out}: exists and is not empty; choose another --out or pass --force to replace it")
    marker, kind = _REPLACEABLE[replaces]
    if not (out / marker).is_file():
        raise RunError(f"{out}: is not a {kind} (no {marker}), and --force only replaces one; choose another --out")
    if replaces == "export" and (out / RUN_INFO).is_file():
        raise RunError(f"{out}: is a tftune run, and --force only replaces an export; choose another --out")


# === The run-directory format ===

# Written into every run's `run.json`. A run without it predates the field and has format 1's files.
# Format 2: a run directory is a preset in keras-hub's layout (`tftune.models.preset_files`), plus
# tftune's run files. Format 1 (separate encoder and task weights, rebuilt from the recipe) is
# converted once by `tftune convert` (`tftune.convert`).
FORMAT_VERSION = 2


class RunFile:
    """One file or folder of a run, named by its role: `run.vocab_file` is the path, and only the
    class that declares it knows the file name."""

    def __init__(self, name):
        self.name = name

    def __get__(self, run, owner=None):
        return self if run is None else run.path / self.name


class Run:
    """A run directory of one kind: the names of its files, and reading, writing and checking them.

    Open a complete run with `open` (it checks the kind, the format and the files); write a new
    one with `create`, which stages it and publishes it whole. Subclasses declare their files as
    `RunFile`s, and `required`, the roles a complete run has. Nothing else in tftune knows a run's
    file names.

    Args:
        path: the run directory (not read: use `open` to check it).
        info: its `run.json`, once read or written.

    Example:

    >>> run = PretrainRun.open("runs/lm")  # doctest: +SKIP
    >>> run.vocab, run.metrics()["valid"]["perplexity"]  # doctest: +SKIP
    >>> with FinetuneRun.create("runs/clf", force=False) as run:  # doctest: +SKIP
    ...     run.write_info(vocab, tokenizer, embedding_dim=50, pretrain_run="runs/lm")
    ...     run.save_model(classifier)
    """

    kind = None
    format_version = FORMAT_VERSION  # the format `open` reads
    info_file = RunFile(RUN_INFO)
    recipe_file = RunFile("recipe.toml")
    history_file = RunFile("history.json")
    metrics_file = RunFile("metrics.json")
    logs = RunFile("logs")  # TensorBoard event files
    # The run's model, as a preset (`save_model` writes them, `from_preset` reads them).
    vocab_file = RunFile(f"{models.TOKENIZER_ASSETS_DIR}/vocabulary.txt")
    backbone_config_file = RunFile(models.BACKBONE_CONFIG_FILE)
    task_config_file = RunFile(models.TASK_CONFIG_FILE)
    preprocessor_config_file = RunFile(models.PREPROCESSOR_CONFIG_FILE)
    backbone_weights = RunFile(models.BACKBONE_WEIGHTS_FILE)
    task_weights = RunFile(models.TASK_WEIGHTS_FILE)
    metadata_file = RunFile(models.METADATA_FILE)
    preset_files = ("vocab_file", "backbone_config_file", "task_config_file", "preprocessor_config_file",
                    "backbone_weights", "task_weights", "metadata_file")
    required = ("recipe_file", "metrics_file", *preset_files)

    def __init__(self, path, info=None):
        self.path = Path(path)
        self.info = info
        # The `run_id` of the checkpoint this run was trained with, recorded in `run.json`: a checkpoint
        # left beside a published run (its process died before removing it) is known by it.
        self.checkpoint_run_id = None

    # --- Reading ---

    @classmethod
    def kind_at(cls, path):
        """The kind (`"pretrain"`, `"finetune"`) `path`'s `run.json` declares, or None when it is no run."""
        try:
            return json.loads(cls(path).info_file.read_text(encoding="utf-8")).get("kind")
        except (ValueError, OSError, AttributeError):
            return None

    @classmethod
    def open(cls, path, require=None):
        """The run of this kind at `path`; anything else is a one-line `RunError`.

        Args:
            path: the run directory.
            require: the roles whose files must be there (e.g. `("recipe_file",)`); default: those
                of a complete run (`required`). `()` only reads `run.json`, e.g. to list runs.
        """
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        run = cls(path)
        if not run.info_file.is_file():
            raise RunError(f"{path}: not a tftune run directory (no {RUN_INFO})")
        run.info = read_json(run.info_file)
        if not isinstance(run.info, dict):
            raise RunError(f"{run.info_file}: unreadable, is it truncated or damaged? (not a JSON object)")
        if run.info.get("kind") != cls.kind:
            raise RunError(f"{path}: is a {run.info.get('kind', 'unknown')} run, expected a {cls.kind} run")
        version = run.info.get("format", 1)
        if not isinstance(version, int) or version > cls.format_version:
            raise RunError(
                f"{path}: written in run format {version}, newer than this tftune reads ({cls.format_version}); "
                "upgrade tftune"
            )
        if version < cls.format_version:
            raise RunError(f"{path}: written in run format {version}; convert it once with "
                           f"`tftune convert {path} --out NEW_DIR`")
        require = cls.required if require is None else require
        missing = [str(getattr(run, role).relative_to(path)) for role in require if not getattr(run, role).is_file()]
        if missing:
            raise RunError(f"{path}: incomplete {cls.kind} run, missing {', '.join(missing)}")
        return run

    @functools.cached_property
    def recipe(self):
        """The recipe the run trained with (`tftune.recipe.Recipe`)."""
        from tftune.recipe import Recipe

        return Recipe.from_toml_file(self.recipe_file)

    @property
    def description(self) -> str:
        """The recipe's description, read without checking the rest of the recipe (for listings)."""
        import tomllib

        return str(tomllib.loads(self.recipe_file.read_text(encoding="utf-8")).get("description", ""))

    @functools.cached_property
    def vocab(self):
        """The run's `Vocabulary`, checked against the fingerprint its weights were saved with."""
        from tftune.text import Vocabulary  # imports TensorFlow

        vocab = Vocabulary.load(self.vocab_file)
        if vocab.fingerprint() != self.info["vocab_fingerprint"]:
            raise RunError(f"{self.vocab_file}: vocabulary does not match the one the encoder was trained with")
        return vocab

    @functools.cached_property
    def tokenizer(self):
        """The run's `Tokenizer`, as it was configured."""
        from tftune.text import Tokenizer

        return Tokenizer.from_config(self.info["tokenizer"])

    @property
    def embedding_dim(self) -> int:
        return self.info["embedding_dim"]

    def vocabulary_size(self) -> int | None:
        """Rows of the vocabulary, counted without loading it (None if the file cannot be read)."""
        try:
            with open(self.vocab_file, "rb") as vocab:
                return sum(1 for _ in vocab)
        except OSError:
            return None

    def metrics(self) -> dict:
        return read_json(self.metrics_file)

    # --- Writing ---

    @classmethod
    def create(cls, out, force=False, checkpoint=None):
        """A context manager: a new run of this kind, staged beside `out` and moved there whole when
        the block succeeds (see `RunDirectory`); then its `checkpoint` is removed."""
        return RunDirectory(out, force, cls, checkpoint)

    def write_info(self, vocab, tokenizer, embedding_dim, **fields):
        """Writes `run.json` (the kind, the format, the tftune version, what the weights were trained
        with: the vocabulary's fingerprint, the tokenizer, the vectors' size; and `fields`) and the
        vocabulary that fingerprint describes (`vocab.txt`)."""
        from tftune import __version__

        self.info = {"kind": self.kind, "format": FORMAT_VERSION, "tftune_version": __version__, **fields,
                     "vocab_fingerprint": vocab.fingerprint(), "embedding_dim": int(embedding_dim),
                     "tokenizer": tokenizer.get_config()}
        if self.checkpoint_run_id is not None:
            self.info["checkpoint_run_id"] = self.checkpoint_run_id
        write_json(self.info_file, self.info)
        self.vocab_file.parent.mkdir(parents=True, exist_ok=True)
        vocab.save(self.vocab_file)

    def save_model(self, model):
        """Writes the run's model (a task with its preprocessor) as the run's preset files."""
        from tftune.models.preset_files import save_to_preset

        save_to_preset(model, self.path)

    def write_recipe(self, recipe, write_path=None):
        self.recipe_file.write_text(recipe.to_toml(write_path), encoding="utf-8")

    def write_history(self, epochs):
        write_json(self.history_file, epochs)

    def write_metrics(self, metrics):
        write_json(self.metrics_file, metrics)

    def adopt_logs(self, source):
        """Moves a folder of TensorBoard logs (`live_logs`) into the run as its `logs/`, if it exists."""
        if Path(source).is_dir():
            shutil.move(str(source), str(self.logs))


class PretrainRun(Run):
    """A pretrain run: the language model (`LanguageModel.from_preset`) and its backbone.

    Shipped pretrained models (`tftune.pretrained_models`) are pretrain runs too, with a model card
    beside the files.
    """

    kind = "pretrain"
    # What a copy of the run keeps to be fine-tuned and continued (the TensorBoard logs stay behind).
    portable = ("info_file", *Run.preset_files, "metrics_file", "history_file")


class FinetuneRun(Run):
    """A finetune run: the classifier (or ensemble), its labels and its raw-string export."""

    kind = "finetune"
    labels_file = RunFile("labels.json")
    export = RunFile("export")  # the SavedModel
    required = Run.required + ("labels_file",)

    def labels(self) -> list:
        return read_json(self.labels_file)

    def write_labels(self, labels):
        write_json(self.labels_file, list(labels))

    def load_model(self):
        """The trained classifier (or ensemble), with its preprocessor, compiled for `fit` and `evaluate`."""
        from tftune.models.preset_files import load_task

        self.vocab  # checks the vocabulary against the one the weights were trained with
        model = load_task(self.path)
        model.compile_for_classes()
        return model


class RunDirectory:
    """A context manager that stages a run directory and publishes it on success.

    Entering yields a `run_class` whose path is the staging folder; on success it is moved to
    `out` (replacing an earlier run only with `force`) and the run's checkpoint is removed; on
    failure the staging folder is removed. A process killed in between leaves a published run and
    a checkpoint whose `run_id` its `run.json` records: the next command on `out` removes it.

    Args:
        out: the final directory.
        force: replace an existing non-empty `out`.
        run_class: the kind of run written (`PretrainRun`, `FinetuneRun`).
        checkpoint: the run's `tftune.checkpoints.RunCheckpoint`, removed once the run is published.
        replaces: what `out` is, for `check_writable_target` and messages: `"run"` or `"report"`
            (a folder of `tftune interpret`).
    """

    def __init__(self, out, force=False, run_class=Run, checkpoint=None, replaces="run"):
        self.out = Path(out)
        self.force = force
        self.run = None
        self.run_class = run_class
        self.checkpoint = checkpoint
        self.replaces = replaces

    def __enter__(self):
        check_writable_target(self.out, self.force, self.replaces)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        except OSError as e:
            raise WriteError(
                f"{self.out}: cannot create the {self.replaces} directory ({e.strerror}); nothing was written"
            ) from e
        self.run = self.run_class(staging)
        if self.checkpoint is not None:
            self.run.checkpoint_run_id = self.checkpoint.run_id
        return self.run

    def __exit__(self, exc_type, exc, traceback):
        staging = self.run.path
        if exc_type is not None:
            close_failed_h5_files(staging)
            shutil.rmtree(staging, ignore_errors=True)
            reason = None if isinstance(exc, TftuneError) else write_failure(exc)
            if reason is not None:
                raise WriteError(
                    f"{self.out}: writing the {self.replaces} failed ({reason}); nothing was written"
                ) from exc
            return False
        os.chmod(staging, 0o755)
        replace_directory(staging, self.out, fault="publish")
        self.run.path = self.out
        fault_point("published")
        if self.checkpoint is not None:
            self.checkpoint.remove()
        return False


def write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    fault_point("run-file")


def check_vector_size(recipe, from_run):
    """Fails when the recipe's vectors have another dimension than those the pretrain run was trained on.

    A run continued or fine-tuned from `from_run` (an opened `PretrainRun`) keeps that run's
    embedding, so vectors of another
    size in `embeddings.path` (e.g. from `--embeddings`) can only be a mistake. Files whose size
    cannot be read cheaply (missing, keyedvectors) are not checked: the run does not need them.
    """
    from tftune.embeddings import vector_size  # imports TensorFlow

    trained = from_run.info.get("embedding_dim")
    settings = recipe.embeddings
    size = vector_size(settings.path, settings.format)
    if size is not None and trained is not None and size != trained:
        raise RunError(
            f"embeddings.path: {Path(settings.path).name} holds {size}-d vectors, but the pretrain run "
            f"{from_run.path} was trained on {trained}-d vectors and runs built on it keep them; drop the other "
            "vectors (--embeddings, or the --recipe's embeddings.path)"
        )
