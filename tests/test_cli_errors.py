"""Bad input on the real command line: one `error:` line naming the culprit, the right exit status, nothing written.

This is the catalogue of hostile inputs that the "Bad input" table of docs/reference/errors.md documents, one case
per row. Every case fails before training starts, except the full disk (which fails while the run
is written). Commands that import TensorFlow still take a few seconds to start, so the cases run
concurrently, each in its own working directory, and each test checks the result of its own case:
exit status 2 (bad input) or 1 (the output could not be written), exactly one `error: ` line on
stderr that names the file or field and what is wrong, no traceback, nothing on stdout, and the
working directory byte-identical afterwards (no `--out`, no staging leftovers, inputs untouched).

The cases that need a trained pretrain run (`SLOW_CASES`) share one tiny run built once per module
through the command line.
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import preloaded_python
from conftest import snapshot, tiny_overrides
from tftune.recipe import load_recipe, shipped_dirs

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
GLOVE = PRETRAINED / "glove.6B.50d.top20k.txt"
WORD2VEC = PRETRAINED / "word2vec-googlenews-300d-top5k.bin"
CORPUS = PRETRAINED / "corpus" / "wikitext-2-valid.txt"
TRAIN = PRETRAINED / "authors" / "train.csv"
SHIPPED_RECIPES = ["gru-glove", "gru-word2vec", "lstm-glove", "lstm-word2vec", "rnn-glove"]
TFTUNE = [sys.executable, "-m", "tftune.cli"]
# A case that starts training by mistake fails on this instead of stalling the suite.
TIMEOUT_SECONDS = 120
# Small enough that the first weights file of a run cannot be written: a full disk, simulated.
FULL_DISK_BYTES = 64 * 1024
# Sets RLIMIT_FSIZE and ignores SIGXFSZ (so a write past the limit fails with EFBIG instead of
# killing the process), then runs the CLI as `python -m tftune.cli` would. A launcher rather than
# a preexec_fn, which is not safe while the harness's other threads start processes.
LIMITED_LAUNCHER = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "sys.argv = ['-m', *sys.argv[2:]]; runpy.run_module('tftune.cli', run_name='__main__', alter_sys=True)"
)


def cli_environment():
    """The environment of a user's shell: the CLI itself must keep TensorFlow's start-up notices quiet."""
    env = {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TFTUNE_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_tftune(args, cwd=None, stdin=b"", max_file_size=None):
    """Runs the CLI; stdout and stderr come back as text, whatever bytes went in."""
    command = [*TFTUNE, *map(str, args)]
    if max_file_size is not None:
        command = [sys.executable, "-c", LIMITED_LAUNCHER, str(max_file_size), *map(str, args)]
    result = preloaded_python.run(
        command, cwd=cwd, env=cli_environment(), input=stdin, capture_output=True, timeout=TIMEOUT_SECONDS
    )
    result.stdout = result.stdout.decode("utf-8", "replace")
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def reviews(n_rows):
    """The first and last rows of the shipped validation reviews (both classes), as (text, label)."""
    with open(PRETRAINED / "movie-reviews" / "valid.csv", encoding="utf-8", newline="") as f:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(f)]
    return rows[: n_rows // 2] + rows[-(n_rows // 2) :]


def csv_text(rows, header=("text", "label"), delimiter=","):
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def real_reviews_csv(n_rows, header=("text", "label")):
    return csv_text(reviews(n_rows), header)


def corpus_lines(n):
    return "".join(CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)[:n])


def latin1_reviews_csv():
    """Real reviews saved as latin-1, with an accented word in the third row (line 4)."""
    rows = reviews(6)
    rows[2] = (rows[2][0] + " a café and a naïve plot", rows[2][1])
    return csv_text(rows).encode("latin-1")


LATIN1_CSV = latin1_reviews_csv()
LATIN1_BYTE = LATIN1_CSV.index("é".encode("latin-1"))
NOT_A_RUN = {"not-a-run/notes.txt": "results of an older experiment\n"}
GLOVE_ROWS = GLOVE.read_text(encoding="utf-8").splitlines(keepends=True)[:200]


def unreadable(name):
    def prepare(cwd, run):
        os.chmod(cwd / name, 0)

    return prepare


def named_pipe(name):
    """`prepare`: a FIFO `name` with no writer, which a reader would wait on forever."""

    def prepare(cwd, run):
        os.mkfifo(cwd / name)

    return prepare


def symlink(name, target):
    """`prepare`: a symbolic link `name` to `target` (relative to the link) in the working directory."""

    def prepare(cwd, run):
        (cwd / name).symlink_to(target)

    return prepare


# Stand-ins for runs: the check that an output is not an input comes before any run is loaded.
RUN_RECIPE = load_recipe("gru-glove").to_toml()


def pretrain_run(name):
    return {f"{name}/run.json": '{"kind": "pretrain", "format": 2}\n', f"{name}/recipe.toml": RUN_RECIPE}


def finetune_run(name):
    return {f"{name}/run.json": '{"kind": "finetune", "format": 2}\n', f"{name}/task.weights.h5": b"\x89HDF weights",
            f"{name}/export/saved_model.pb": b"a SavedModel"}


def checkpoint_holding(out, name, content):
    """Files of an interrupted run's checkpoint beside `out`, with an input of the next command in it."""
    return {f".{out}.checkpoint/state.json": '{"kind": "pretrain"}\n', f".{out}.checkpoint/{name}": content}


SHIPPED = shipped_dirs()[-1]
INPUT = "(an input of this command"


@dataclass
class Case:
    """A command line that must fail, the files it starts with, and what its message must name.

    Args:
        args: the command line after `tftune`.
        names: fragments that the error line must contain (the culprit and what is wrong).
        files: files to create in the working directory first (str: UTF-8 text; bytes: as is).
        status: the expected exit status.
        stdin: bytes on standard input.
        prepare: `prepare(cwd, pretrain_run)` runs after the files are written, e.g. to copy and
            damage the module's pretrain run (None for the fast cases).
        max_file_size: RLIMIT_FSIZE of the command, to simulate a full disk.
        logs: the command gets as far as logging its progress (`tftune: ...` lines) first.
        skip: why the case cannot run here, or None.
    """

    args: list
    names: list
    files: dict = field(default_factory=dict)
    status: int = 2
    stdin: bytes = b""
    prepare: Callable | None = None
    max_file_size: int | None = None
    logs: bool = False
    skip: str | None = None


CASES = {
    # --- files: missing, unreadable, empty, binary, not UTF-8 ---
    "--corpus missing": Case(["pretrain", "--corpus", "missing.txt", "--out", "out"], ["missing.txt", "no such file"]),
    "evaluate --data missing": Case(
        ["evaluate", "not-a-run", "--data", "missing.csv"], ["missing.csv", "no such file"], NOT_A_RUN
    ),
    "--corpus without read permission": Case(
        ["pretrain", "--corpus", "corpus.txt", "--out", "out"],
        ["corpus.txt", "cannot read (Permission denied)"],
        {"corpus.txt": corpus_lines(20)},
        prepare=unreadable("corpus.txt"),
        skip="running as root, which reads files whatever their permissions" if os.geteuid() == 0 else None,
    ),
    "--corpus empty": Case(
        ["pretrain", "--corpus", "empty.txt", "--out", "out"], ["empty.txt", "empty"], {"empty.txt": ""}
    ),
    "--corpus binary": Case(
        ["pretrain", "--corpus", "corpus.txt", "--out", "out"],
        ["corpus.txt", "a binary file, not utf-8 text"],
        {"corpus.txt": WORD2VEC.open("rb").read(65536)},
    ),
    # --- special files: refused at once, never opened (a FIFO blocks, /dev/zero never ends) ---
    "--corpus named pipe": Case(
        ["pretrain", "--corpus", "corpus.txt", "--out", "out"],
        ["corpus.txt", "is a named pipe (FIFO), expected a regular file"],
        prepare=named_pipe("corpus.txt"),
    ),
    "--corpus character device": Case(
        ["pretrain", "--corpus", "/dev/zero", "--out", "out"],
        ["/dev/zero", "is a character device, expected a regular file"],
    ),
    "--corpus directory": Case(
        ["pretrain", "--corpus", "texts", "--out", "out"],
        ["texts", "is a directory, expected a regular file"],
        {"texts/corpus.txt": corpus_lines(20)},
    ),
    "finetune --train named pipe": Case(
        ["finetune", "--from", PRETRAINED / "gru-glove-general", "--train", "train.csv", "--out", "out"],
        ["train.csv", "is a named pipe (FIFO)"],
        prepare=named_pipe("train.csv"),
    ),
    "evaluate --data named pipe": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", "is a named pipe (FIFO)"],
        NOT_A_RUN,
        prepare=named_pipe("reviews.csv"),
    ),
    "--embeddings character device": Case(
        ["pretrain", "--corpus", CORPUS, "--embeddings", "/dev/zero", "--out", "out"],
        ["/dev/zero", "is a character device"],
    ),
    "--recipe named pipe": Case(
        ["pretrain", "--recipe", "recipe.toml", "--out", "out"],
        ["recipe.toml", "is a named pipe (FIFO)"],
        prepare=named_pipe("recipe.toml"),
    ),
    # --- names: an empty --out (an unset shell variable) never means the default folder ---
    **{f"{command} --out empty": Case([command, *args, "--out", ""], ["--out is empty"])
       for command, args in [("pretrain", ["--corpus", CORPUS]),
                             ("finetune", ["--from", PRETRAINED / "gru-glove-general", "--train", "train.csv"]),
                             ("export", ["clf"])]},
    "usage error": Case(["predict"], ["Missing argument 'RUN_OR_EXPORT'", "predict --help"]),
    "unknown option": Case(["pretrain", "--corpra", "x.txt"], ["No such option '--corpra'", "pretrain --help"]),
    "recipe name with ..": Case(
        ["pretrain", "--corpus", CORPUS, "--set", "name=../../elsewhere"],
        ["name must be a non-empty one-line name without / \\ or ..", "../../elsewhere"],
    ),
    "--corpus latin-1": Case(
        ["pretrain", "--corpus", "reviews.csv", "--out", "out"],
        ["reviews.csv", f"not valid utf-8 at byte {LATIN1_BYTE} (line 4,", "pass --encoding latin-1"],
        {"reviews.csv": LATIN1_CSV},
    ),
    # The suggested fix works: the corpus is read, and the command goes on to the next problem.
    "--corpus latin-1 --encoding latin-1": Case(
        ["pretrain", "--corpus", "reviews.csv", "--encoding", "latin-1", "--embeddings", "missing.vec", "--out", "out"],
        ["missing.vec", "does not exist"],
        {"reviews.csv": LATIN1_CSV},
    ),
    "evaluate --data latin-1": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", f"not valid utf-8 at byte {LATIN1_BYTE} (line 4,", "pass --encoding latin-1"],
        {**NOT_A_RUN, "reviews.csv": LATIN1_CSV},
    ),
    # The suggested fix works: the file is read, and the command goes on to the next problem.
    "evaluate --data latin-1 --encoding latin-1": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv", "--encoding", "latin-1"],
        ["not-a-run", "neither a SavedModel export"],
        {**NOT_A_RUN, "reviews.csv": LATIN1_CSV},
    ),
    "evaluate --data UTF-16": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", "UTF-16 byte order mark", "pass --encoding utf-16"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6).encode("utf-16")},
    ),
    "evaluate --encoding unknown": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv", "--encoding", "klingon"],
        ["--encoding", "unknown text encoding 'klingon'"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6)},
    ),
    "predict standard input latin-1": Case(
        ["predict", "not-a-run"],
        ["standard input", "not valid utf-8 at byte 3 (line 1, column 4)", "pass --encoding latin-1"],
        NOT_A_RUN,
        stdin="café au lait\n".encode("latin-1"),
    ),
    "embeddings inspect --corpus latin-1": Case(
        ["embeddings", "inspect", GLOVE, "--corpus", "reviews.csv"],
        ["reviews.csv", f"byte {LATIN1_BYTE}", "pass --encoding latin-1"],
        {"reviews.csv": LATIN1_CSV},
    ),
    # --- labeled files: columns, ragged rows, bad JSON lines ---
    "evaluate --plot not a PNG name": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv", "--plot", "confusion.pdf"],
        ["confusion.pdf", "--plot writes a PNG", ".png"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6)},
    ),
    "evaluate --plot in a missing directory": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv", "--plot", "plots/confusion.png"],
        ["plots/confusion.png", "directory plots does not exist"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6)},
    ),
    "evaluate --plot over an existing file": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv", "--plot", "confusion.png"],
        ["confusion.png", "exists", "--force"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6), "confusion.png": b"\x89PNG an earlier plot"},
    ),
    "evaluate --data without label column": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", "header: no label column 'label'", "sentiment"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6, header=("text", "sentiment"))},
    ),
    "evaluate --data without text column": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", "header: no text column 'text'", "review"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6, header=("review", "label"))},
    ),
    "evaluate --data ragged CSV row": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["reviews.csv", "line 4: 3 fields, but the header has 2"],
        {**NOT_A_RUN, "reviews.csv": csv_text([*reviews(2), (*reviews(4)[2], "extra"), *reviews(4)[3:]])},
    ),
    "evaluate --data ragged TSV row": Case(
        ["evaluate", "not-a-run", "--data", "reviews.tsv"],
        ["reviews.tsv", "line 3: 1 fields, but the header has 2"],
        {**NOT_A_RUN, "reviews.tsv": csv_text([reviews(2)[0], (reviews(2)[1][0],)], delimiter="\t")},
    ),
    "evaluate --data JSONL with a bad line": Case(
        ["evaluate", "not-a-run", "--data", "reviews.jsonl"],
        ["reviews.jsonl", "line 3: invalid JSON"],
        {
            **NOT_A_RUN,
            "reviews.jsonl": "".join(
                json.dumps({"text": text, "label": label})[: -10 if number == 3 else None] + "\n"
                for number, (text, label) in enumerate(reviews(4), start=1)
            ),
        },
    ),
    # A document longer than the csv module's default field limit (128 KiB) is read; the next problem shows.
    "evaluate --data with a 400 KB text": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["not-a-run", "neither a SavedModel export"],
        {**NOT_A_RUN, "reviews.csv": csv_text([(" ".join([reviews(2)[0][0]] * 100), reviews(2)[0][1]), reviews(2)[1]])},
    ),
    # --- vectors files ---
    "--embeddings missing": Case(
        ["pretrain", "--corpus", CORPUS, "--embeddings", "missing.vec", "--out", "out"], ["missing.vec", "does not exist"]
    ),
    "--embeddings word2vec binary read as glove": Case(
        ["pretrain", "--corpus", CORPUS, "--embeddings", WORD2VEC, "--embeddings-format", "glove", "--out", "out"],
        [WORD2VEC.name, "'word2vec-binary'"],
    ),
    "embeddings inspect glove text read as word2vec-binary": Case(
        ["embeddings", "inspect", "vectors.txt", "--format", "word2vec-binary"],
        ["vectors.txt", "looks like GloVe text (no header), not word2vec binary; use format 'glove'"],
        {"vectors.txt": "".join(GLOVE_ROWS)},
    ),
    "embeddings inspect glove text read as word2vec text": Case(
        ["embeddings", "inspect", "vectors.txt", "--format", "word2vec"],
        ["vectors.txt", "use format 'glove'"],
        {"vectors.txt": "".join(GLOVE_ROWS)},
    ),
    "pretrain on vectors with a nan": Case(
        ["pretrain", "--corpus", CORPUS, "--embeddings", "vectors.txt", "--embeddings-format", "glove", "--out", "out"],
        ["vectors.txt", "line 8 (word 'a') has a non-finite value (nan); the file is corrupt"],
        {"vectors.txt": "".join(GLOVE_ROWS[:7] + ["a nan " + GLOVE_ROWS[7].split(" ", 2)[2]] + GLOVE_ROWS[8:])},
    ),
    "embeddings inspect truncated last line": Case(
        ["embeddings", "inspect", "vectors.txt"],
        ["vectors.txt", "line 200 has", "values, expected 50; the file seems truncated"],
        {"vectors.txt": "".join(GLOVE_ROWS)[:-100]},
    ),
    "embeddings inspect truncated word2vec binary": Case(
        ["embeddings", "inspect", "vectors.bin", "--format", "word2vec-binary"],
        ["vectors.bin", "ends before the 5,000 vectors its header announces"],
        {"vectors.bin": WORD2VEC.open("rb").read(100_000)},
    ),
    "embeddings inspect rows of different dimensions": Case(
        ["embeddings", "inspect", "vectors.txt"],
        ["vectors.txt", "line 11 has 29 values, expected 50 (ragged rows)"],
        {"vectors.txt": "".join(GLOVE_ROWS[:10] + [" ".join(GLOVE_ROWS[10].split()[:30]) + "\n"] + GLOVE_ROWS[11:])},
    ),
    "embeddings inspect header declares another dimension": Case(
        ["embeddings", "inspect", "vectors.vec", "--format", "word2vec"],
        ["vectors.vec", "line 2 has 50 values, but the header (line 1) declares 100 dimensions"],
        {"vectors.vec": f"{len(GLOVE_ROWS)} 100\n" + "".join(GLOVE_ROWS)},
    ),
    # --- recipes ---
    "unknown recipe": Case(
        ["pretrain", "--recipe", "no-such-recipe", "--out", "out"], ["'no-such-recipe'", "lstm-glove"]
    ),
    "recipes show unknown": Case(["recipes", "show", "no-such-recipe"], ["'no-such-recipe'"]),
    "unknown --set key": Case(["pretrain", "--set", "encoder.widht=128", "--out", "out"], ["encoder.widht", "units"]),
    "unknown key in a recipe file": Case(
        ["pretrain", "--recipe", "my.toml", "--out", "out"],
        ["my.toml", "unknown key encoder.widht", "units"],
        {"my.toml": "[encoder]\nwidht = 128\n"},
    ),
    "mistyped --set value": Case(
        ["pretrain", "--set", "encoder.units=many", "--out", "out"], ["encoder.units", "many"]
    ),
    "mistyped value in a recipe file": Case(
        ["pretrain", "--recipe", "my.toml", "--out", "out"],
        ["my.toml", "encoder.units must be an int in 1..16384", '"many"'],
        {"my.toml": '[encoder]\nunits = "many"\n'},
    ),
    "malformed --set": Case(
        ["pretrain", "--set", "encoder.units", "--out", "out"], ["encoder.units", "section.key=value"]
    ),
    # --- runs and outputs ---
    "--out not empty": Case(["pretrain", "--corpus", CORPUS, "--out", "out"], ["out: exists", "--force"],
                            {"out/notes.txt": "keep me\n"}),
    "--force over a folder that is not a run": Case(
        ["pretrain", "--corpus", CORPUS, "--out", "out", "--force"],
        ["out: is not a tftune run (no run.json), and --force only replaces one; choose another --out"],
        {"out/notes.txt": "keep me\n"},
    ),
    "export --force over a pretrain run": Case(
        ["export", "clf", "--out", "lm", "--force"],
        ["lm: is not a SavedModel export (no saved_model.pb), and --force only replaces one"],
        {**finetune_run("clf"), **pretrain_run("lm")},
    ),
    "--out is a file": Case(["pretrain", "--corpus", CORPUS, "--out", "out"], ["out: exists and is not a directory"],
                            {"out": "keep me\n"}),
    "finetune --from not a run": Case(
        ["finetune", "--from", "not-a-run", "--out", "out"], ["not-a-run", "run.json"], NOT_A_RUN
    ),
    "finetune --from not a run, with --recipe": Case(
        ["finetune", "--from", "not-a-run", "--recipe", "gru-glove", "--out", "out"],
        ["not-a-run", "run.json"],
        NOT_A_RUN,
    ),
    "finetune --from a finetune run": Case(
        ["finetune", "--from", "clf", "--out", "out"],
        ["clf: is a finetune run, expected a pretrain run"],
        {"clf/run.json": '{"kind": "finetune"}\n'},
    ),
    "finetune --from missing": Case(["finetune", "--from", "missing-run", "--out", "out"], ["missing-run", "no such"]),
    # --- data are arguments ---
    "pretrain without --corpus": Case(["pretrain", "--out", "out"], ["no corpus", "--corpus FILE"]),
    "finetune without --train": Case(["finetune", "--from", PRETRAINED / "gru-glove-general", "--out", "out"],
                                     ["no training data", "--train FILE"]),
    "a data file set as a recipe setting": Case(
        ["finetune", "--from", PRETRAINED / "gru-glove-general", "--set", "finetune.train=train.csv", "--out", "out"],
        ["finetune.train is no longer a recipe setting", "pass --train instead"],
    ),
    "predict not an export": Case(
        ["predict", "not-a-run", "a gripping , moving film ."], ["not-a-run", "export"], NOT_A_RUN
    ),
    "evaluate not an export": Case(
        ["evaluate", "not-a-run", "--data", "reviews.csv"],
        ["not-a-run", "export"],
        {**NOT_A_RUN, "reviews.csv": real_reviews_csv(6)},
    ),
    "embeddings inspect missing": Case(["embeddings", "inspect", "missing.vec"], ["missing.vec", "does not exist"]),
    # --- outputs over inputs: refused with --force too, before anything is read or written ---
    "pretrain --out holds its --corpus": Case(
        ["pretrain", "--corpus", "data/corpus.txt", "--out", "data", "--force"],
        ["--out data: contains the --corpus file data/corpus.txt " + INPUT, "choose another --out"],
        {"data/corpus.txt": corpus_lines(20)},
    ),
    "pretrain --out is its --from run": Case(
        ["pretrain", "--from", "lm", "--corpus", "more.txt", "--out", "lm", "--force"],
        ["--out lm: is the --from run lm " + INPUT],
        {**pretrain_run("lm"), "more.txt": corpus_lines(20)},
    ),
    "pretrain --out inside its --from run": Case(
        ["pretrain", "--from", "lm", "--corpus", "more.txt", "--out", "lm/continued"],
        ["--out lm/continued: lies inside the --from run lm " + INPUT],
        {**pretrain_run("lm"), "more.txt": corpus_lines(20)},
    ),
    "pretrain --corpus in the checkpoint folder of --out": Case(
        ["pretrain", "--corpus", ".lm.checkpoint/corpus.txt", "--out", "lm", "--force"],
        ["--out lm: its checkpoint folder .lm.checkpoint contains the --corpus file .lm.checkpoint/corpus.txt"],
        checkpoint_holding("lm", "corpus.txt", corpus_lines(20)),
    ),
    "pretrain --out in the shipped data": Case(
        ["pretrain", "--corpus", "missing.txt", "--out", SHIPPED / "my-lm"],
        [f"--out {SHIPPED / 'my-lm'}: lies inside the shipped data folder {SHIPPED} " + INPUT],
    ),
    "finetune --out is its --from run": Case(
        ["finetune", "--from", "lm", "--train", "train.csv", "--out", "lm", "--force"],
        ["--out lm: is the --from run lm " + INPUT],
        {**pretrain_run("lm"), "train.csv": real_reviews_csv(20)},
    ),
    "finetune --out holds its --train": Case(
        ["finetune", "--from", "lm", "--train", "data/train.csv", "--out", "data", "--force"],
        ["--out data: contains the --train file data/train.csv " + INPUT],
        {**pretrain_run("lm"), "data/train.csv": real_reviews_csv(20)},
    ),
    "finetune --out inside its --from run": Case(
        ["finetune", "--train", TRAIN, "--from", "lm", "--out", "lm/clf"], ["--out lm/clf: lies inside the --from run lm " + INPUT],
        pretrain_run("lm"),
    ),
    "finetune --out is the second --from run": Case(
        ["finetune", "--from", "lm", "--from", "lm-back", "--train", "train.csv", "--out", "lm-back", "--force"],
        ["--out lm-back: is the --from run lm-back " + INPUT],
        {**pretrain_run("lm"), **pretrain_run("lm-back"), "train.csv": real_reviews_csv(20)},
    ),
    "finetune --out holds both --from runs": Case(
        ["finetune", "--from", "runs/lm", "--from", "runs/lm-back", "--train", "train.csv", "--out", "runs", "--force"],
        ["--out runs: contains the --from run runs/lm " + INPUT],
        {**pretrain_run("runs/lm"), **pretrain_run("runs/lm-back"), "train.csv": real_reviews_csv(20)},
    ),
    "finetune --out a symbolic link to its --from run": Case(
        ["finetune", "--from", "lm", "--train", "train.csv", "--out", "link", "--force"],
        ["--out link: is the --from run lm " + INPUT, "; through a symbolic link, link is /", "/lm)"],
        {**pretrain_run("lm"), "train.csv": real_reviews_csv(20)},
        prepare=symlink("link", "lm"),
    ),
    "finetune --train a symbolic link into --out": Case(
        ["finetune", "--from", "lm", "--train", "train.csv", "--out", "data", "--force"],
        ["--out data: contains the --train file train.csv (an input of this command; through a symbolic link, "
         "train.csv is /", "/data/train.csv)"],
        {**pretrain_run("lm"), "data/train.csv": real_reviews_csv(20)},
        prepare=symlink("train.csv", "data/train.csv"),
    ),
    "finetune --out with .. to its --from run": Case(
        ["finetune", "--from", "lm", "--train", "train.csv", "--out", "data/../lm", "--force"],
        ["--out data/../lm: is the --from run lm " + INPUT],
        {**pretrain_run("lm"), "train.csv": real_reviews_csv(20), "data/notes.txt": "keep me\n"},
    ),
    "finetune --train in the checkpoint folder of --out": Case(
        ["finetune", "--from", "lm", "--train", ".clf.checkpoint/train.csv", "--out", "clf", "--force"],
        ["--out clf: its checkpoint folder .clf.checkpoint contains the --train file .clf.checkpoint/train.csv"],
        {**pretrain_run("lm"), **checkpoint_holding("clf", "train.csv", real_reviews_csv(20))},
    ),
    "export --out is the run": Case(
        ["export", "clf", "--out", "clf", "--force"], ["--out clf: is the exported run clf " + INPUT],
        finetune_run("clf"),
    ),
    "export --out holds the run": Case(
        ["export", "runs/clf", "--out", "runs", "--force"], ["--out runs: contains the exported run runs/clf " + INPUT],
        finetune_run("runs/clf"),
    ),
    "export --out a file of the run": Case(
        ["export", "clf", "--out", "clf/task.weights.h5", "--force"],
        ["--out clf/task.weights.h5: lies inside the exported run clf " + INPUT],
        finetune_run("clf"),
    ),
    "export --out a symbolic link to the run": Case(
        ["export", "clf", "--out", "link", "--force"],
        ["--out link: is the exported run clf " + INPUT, "through a symbolic link, link is /"],
        finetune_run("clf"),
        prepare=symlink("link", "clf"),
    ),
    "evaluate --plot inside the evaluated run": Case(
        ["evaluate", "clf", "--data", "test.csv", "--plot", "clf/confusion.png"],
        ["--plot clf/confusion.png: lies inside the evaluated model clf " + INPUT, "choose another --plot"],
        {**finetune_run("clf"), "test.csv": real_reviews_csv(6)},
    ),
    "evaluate --plot is the --data file": Case(
        ["evaluate", "clf", "--data", "test.png", "--plot", "test.png", "--force"],
        ["--plot test.png: is the --data file test.png " + INPUT],
        {**finetune_run("clf"), "test.png": real_reviews_csv(6)},
    ),
    "evaluate --plot through a symbolic link into the evaluated run": Case(
        ["evaluate", "clf", "--data", "test.csv", "--plot", "link/confusion.png"],
        ["--plot link/confusion.png: lies inside the evaluated model clf " + INPUT, "through a symbolic link"],
        {**finetune_run("clf"), "test.csv": real_reviews_csv(6)},
        prepare=symlink("link", "clf"),
    ),
    "evaluate --plot in the shipped data": Case(
        ["evaluate", "clf", "--data", "test.csv", "--plot", SHIPPED / "confusion.png"],
        [f"--plot {SHIPPED / 'confusion.png'}: lies inside the shipped data folder {SHIPPED} " + INPUT],
        {**finetune_run("clf"), "test.csv": real_reviews_csv(6)},
    ),
    # Not overlaps: the command gets past the check and stops at the stand-in run.
    "export to the run's own export/ (the default)": Case(
        ["export", "clf", "--force"], ["clf: incomplete finetune run, missing recipe.toml"], finetune_run("clf")
    ),
    # A real (untrained) pretrain run, written under a file-size limit: the first weights file fails.
    "disk full while writing the run": Case(
        [
            "pretrain", "--recipe", "gru-glove", "--corpus", "corpus.txt", "--out", "out",
            "--set", "encoder.units=16", "--set", "pretrain.epochs=0", "--set", "pretrain.seq_len=20",
            "--set", "precision.policy=float32",
        ],
        ["out: writing the run failed (File too large); nothing was written"],
        {"corpus.txt": corpus_lines(150)},
        status=1,
        max_file_size=FULL_DISK_BYTES,
        logs=True,
    ),
}


def copy_of_the_run(damage=None):
    """`prepare` for the slow cases: the module's pretrain run copied to ./pretrain, then damaged."""

    def prepare(cwd, run):
        shutil.copytree(run, cwd / "pretrain")
        if damage is not None:
            damage(cwd / "pretrain")

    return prepare


def add_a_word(run):
    with open(run / "assets" / "tokenizer" / "vocabulary.txt", "a", encoding="utf-8") as f:
        f.write("zyzzyva\n")


def one_class_csv():
    return csv_text([(text, "positive") for text, _ in reviews(40)])


SLOW_CASES = {
    "finetune --from an incomplete run": Case(
        ["finetune", "--train", TRAIN, "--from", "pretrain", "--out", "out"],
        ["pretrain: incomplete pretrain run, missing model.weights.h5"],
        prepare=copy_of_the_run(lambda run: (run / "model.weights.h5").unlink()),
    ),
    "finetune --from a run whose vocabulary changed": Case(
        ["finetune", "--train", TRAIN, "--from", "pretrain", "--out", "out"],
        ["vocabulary.txt", "vocabulary does not match the one the encoder was trained with"],
        prepare=copy_of_the_run(add_a_word),
    ),
    "finetune with other vocab settings than the pretrain run": Case(
        ["finetune", "--train", TRAIN, "--from", "pretrain", "--set", "vocab.max_size=100", "--out", "out"],
        ["vocab.max_size is 100 in the recipe but 3000 in the pretrain run pretrain"],
        prepare=copy_of_the_run(),
    ),
    "pretrain --from with vectors of another dimension": Case(
        ["pretrain", "--corpus", CORPUS, "--from", "pretrain", "--embeddings", WORD2VEC, "--embeddings-format", "word2vec-binary",
         "--out", "out"],
        [f"{WORD2VEC.name} holds 300-d vectors", "pretrain run pretrain was trained on 50-d vectors"],
        prepare=copy_of_the_run(),
    ),
    "finetune --train with a single class": Case(
        ["finetune", "--from", "pretrain", "--train", "train.csv", "--out", "out"],
        ["train.csv: only one class ('positive')"],
        {"train.csv": one_class_csv()},
        prepare=copy_of_the_run(),
    ),
    "finetune --test with a label never seen in training": Case(
        ["finetune", "--from", "pretrain", "--train", "train.csv", "--test", "test.csv", "--out", "out"],
        ["test.csv: test label(s) 'neutral' never seen in training"],
        {"train.csv": real_reviews_csv(40), "test.csv": csv_text([*reviews(4), ("a film .", "neutral")])},
        prepare=copy_of_the_run(),
    ),
    "finetune --train latin-1": Case(
        ["finetune", "--from", "pretrain", "--train", "train.csv", "--out", "out"],
        ["train.csv", f"not valid utf-8 at byte {LATIN1_BYTE}", "pass --encoding latin-1"],
        {"train.csv": LATIN1_CSV},
        prepare=copy_of_the_run(),
    ),
}


def write_files(root, files):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def start_cases(pool, root, cases, run=None):
    """Starts every case; maps a case name to (future result, working dir, snapshot before)."""
    started = {}
    for number, (name, case) in enumerate(cases.items()):
        if case.skip:
            continue
        cwd = root / f"case-{number}"
        cwd.mkdir()
        write_files(cwd, case.files)
        if case.prepare is not None:
            case.prepare(cwd, run)
        future = pool.submit(run_tftune, case.args, cwd, case.stdin, case.max_file_size)
        started[name] = (future, cwd, snapshot(cwd))
    return started


def check_failure(case, started):
    if case.skip:
        pytest.skip(case.skip)
    future, cwd, before = started
    result = future.result()  # a case that starts training times out here
    lines = result.stderr.splitlines()
    if case.logs:
        lines = [line for line in lines if not line.startswith("tftune: ")]
    print(result.stderr)  # the catalogue's messages, with `pytest -s`
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == case.status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for culprit in case.names:
        assert culprit in lines[0]
    assert result.stdout == ""
    assert snapshot(cwd) == before  # no --out directory, no staging leftovers, inputs untouched


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        yield start_cases(pool, tmp_path_factory.mktemp("cli-errors"), CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(failures, name):
    check_failure(CASES[name], failures.get(name))


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, small_data):
    """One tiny real pretrain run, trained through the command line (GRU, 16 units, 1 epoch)."""
    out = tmp_path_factory.mktemp("cli-errors-run") / "pretrain"
    settings = [arg for setting in tiny_overrides() for arg in ("--set", setting)]
    result = run_tftune(["pretrain", "--recipe", "gru-glove", "--corpus", small_data["corpus"], *settings, "--out", out])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def slow_failures(tmp_path_factory, pretrain_run):
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        yield start_cases(pool, tmp_path_factory.mktemp("cli-errors-slow"), SLOW_CASES, pretrain_run)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_bad_input_to_a_pretrain_run_is_one_error_line_and_writes_nothing(slow_failures, name):
    check_failure(SLOW_CASES[name], slow_failures.get(name))


# --- Inputs that are not errors ---


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, pretrain_run):
    """A classifier fine-tuned (1 epoch) on reviews, one of them far longer than finetune.max_len."""
    root = tmp_path_factory.mktemp("cli-errors-finetune")
    rows = reviews(40)
    rows[0] = (" ".join([rows[0][0]] * 60), rows[0][1])  # about 40,000 words
    write_files(root, {"train.csv": csv_text(rows), "valid.csv": real_reviews_csv(10)})
    settings = ["finetune.max_len=60", "finetune.epochs=1", "finetune.unfreeze=all"]
    result = run_tftune(
        ["finetune", "--from", pretrain_run, "--train", "train.csv", "--valid", "valid.csv",
         *[arg for setting in settings for arg in ("--set", setting)], "--out", "clf"],
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return root / "clf"


@pytest.mark.slow
def test_texts_longer_than_max_len_are_cut_not_rejected(finetune_run):
    long_text = "a gripping , moving film . " * 20_000  # 100,000 tokens; too long for a command line
    result = run_tftune(["predict", finetune_run], stdin=f"{long_text}\na dull film .\n".encode("utf-8"))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    predictions = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(predictions) == 2 and all(label in ("negative", "positive") for label, _ in predictions)


@pytest.mark.slow
def test_evaluate_with_a_label_the_model_does_not_know(finetune_run, tmp_path):
    write_files(tmp_path, {"test.csv": csv_text([*reviews(4), ("a film .", "neutral")])})
    before = snapshot(tmp_path)
    result = run_tftune(["evaluate", finetune_run, "--data", "test.csv"], cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        "error: test.csv: label(s) 'neutral' unknown to the model (it knows 'negative', 'positive')"
    ]
    assert snapshot(tmp_path) == before


def test_encoding_option_reads_latin1_text(tmp_path):
    corpus = "a café , a naïve plot\n".encode("latin-1")
    write_files(tmp_path, {"vectors.txt": "".join(GLOVE_ROWS), "corpus.txt": corpus})
    args = ["embeddings", "inspect", "vectors.txt", "--corpus", "corpus.txt", "--encoding", "latin-1"]
    result = run_tftune(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    coverage = json.loads(result.stdout)["coverage"]
    assert {"café", "naïve"} <= set(coverage["missing_top"])  # decoded right, and not among the 200 vectors


COMMANDS = [
    [],
    ["pretrain"],
    ["finetune"],
    ["export"],
    ["evaluate"],
    ["predict"],
    ["embeddings"],
    ["embeddings", "inspect"],
    ["recipes"],
    ["recipes", "list"],
    ["recipes", "show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "tftune")
def test_help(command):
    result = run_tftune([*command, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ") and result.stderr == ""
    assert run_tftune([*command, "-h"]).stdout == result.stdout


def test_help_lists_every_command():
    usage = run_tftune(["--help"]).stdout
    for command in ("pretrain", "finetune", "export", "evaluate", "predict", "embeddings", "recipes"):
        assert f"  {command} " in usage


# Runs the command line as the `tftune` script does, then reports on the last stderr line which of
# the slow libraries it imported.
HEAVY_MODULES = ("gensim", "keras", "nltk", "scipy", "tensorflow")
IMPORTS_AT_EXIT = (
    "import atexit, sys; "
    f"atexit.register(lambda: print('imported:', *sorted(set(sys.modules) & set({HEAVY_MODULES!r})), file=sys.stderr)); "
    "sys.argv[0] = 'tftune'; from tftune.cli import main; main()"
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["pretrain", "--corpus", "missing.txt"],
        ["finetune", "--from", "lstm-glove-general", "--train", "missing.csv"],
        ["finetune", "--from", "lstm-glove-general", "--set", "finetune.epochs=many"],
        ["embeddings", "inspect", "missing.vec"],
    ],
    ids=lambda args: " ".join(args),
)
def test_help_and_early_errors_start_without_the_slow_libraries(tmp_path, args):
    # TensorFlow, gensim and NLTK (through scipy) each take a second or more to import.
    result = subprocess.run([sys.executable, "-c", IMPORTS_AT_EXIT, *args], cwd=tmp_path, env=cli_environment(),
                            capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    *messages, imported = result.stderr.splitlines()
    assert imported == "imported:", result.stderr
    if args == ["--help"]:
        assert result.returncode == 0 and result.stdout.startswith("Usage: ") and messages == []
    else:
        assert result.returncode == 2 and len(messages) == 1 and messages[0].startswith("error: "), result.stderr


def test_recipes_list_shows_the_shipped_recipes():
    result = run_tftune(["recipes", "list"])
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        f"{name} (default)" if name == "lstm-glove" else name for name in SHIPPED_RECIPES
    ]
    assert sorted(path.stem for path in (REPO / "recipes").glob("*.toml")) == SHIPPED_RECIPES
    assert all(line.split("\t")[1].strip() for line in lines)  # every recipe has a description
