"""Shared fixtures: small slices of the shipped data and one tiny pretrain/finetune pair."""

import csv
import os
import stat
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests' models are tiny and each compiles with XLA once (language-model steps, fixed-length
# recurrences): XLA's least optimized code generation halves that compile time, in this process
# and the CLI subprocesses, and still runs every compiled path.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
SHARED_DATA = REPO.parent / "shared" / "data"
GLOVE = PRETRAINED / "glove.6B.50d.top20k.txt"
WORD2VEC = PRETRAINED / "word2vec-googlenews-300d-top5k.bin"
CORPUS = PRETRAINED / "corpus" / "wikitext-2-valid.txt"
REVIEWS = PRETRAINED / "movie-reviews"


@pytest.fixture(scope="session", autouse=True)
def corpus_cache_dir(tmp_path_factory):
    """Keeps the corpus cache out of the user's home, in this process and the CLI subprocesses."""
    previous = os.environ.get("TFTUNE_CACHE_DIR")
    os.environ["TFTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("corpus-cache"))
    yield Path(os.environ["TFTUNE_CACHE_DIR"])
    if previous is None:
        del os.environ["TFTUNE_CACHE_DIR"]
    else:
        os.environ["TFTUNE_CACHE_DIR"] = previous


def snapshot(root):
    """Every file and directory under `root` (hidden ones too), with file contents and modes."""
    state = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.stat().st_mode)
        content = None
        if path.is_file() and mode & stat.S_IRUSR:
            content = path.read_bytes()
        state[str(path.relative_to(root))] = (mode, content)
    return state


def head_lines(source, target, n):
    lines = Path(source).read_text(encoding="utf-8").splitlines()[:n]
    Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """Paths of a 300-paragraph corpus and 200/60/60-review splits taken from the shipped data."""
    root = tmp_path_factory.mktemp("data")
    # Reviews are sorted by label within each split; interleave by taking both ends.
    return {
        "corpus": head_lines(CORPUS, root / "corpus.txt", 300),
        "train": balanced_rows(REVIEWS / "train.csv", root / "train.csv", 200),
        "valid": balanced_rows(REVIEWS / "valid.csv", root / "valid.csv", 60),
        "test": balanced_rows(REVIEWS / "test.csv", root / "test.csv", 60),
    }


def balanced_rows(source, target, n, max_words=80):
    with open(source, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = rows[: n // 2] + rows[-(n // 2) :]
    with open(target, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for row in picked:
            writer.writerow([" ".join(row["text"].split()[:max_words]), row["label"]])
    return target


def tiny_overrides(cell="gru", units=16, layers=2):
    """Recipe overrides that train a real but very small model in seconds."""
    return [
        f"encoder.cell={cell}",
        f"encoder.units={units}",
        f"encoder.layers={layers}",
        "vocab.max_size=3000",
        "pretrain.seq_len=20",
        "pretrain.batch_size=32",
        "pretrain.epochs=1",
        "finetune.max_len=60",
        "finetune.batch_size=16",
        f"finetune.epochs={layers + 1}",
        "precision.policy=float32",
    ]


def tiny_corpus(data):
    """The `small_data` corpus, as pretraining takes its data."""
    from tftune.inputs import corpus_data

    return corpus_data(Path(data["corpus"]))


def tiny_labeled(data, test=True):
    """The `small_data` task (train, valid and, with `test`, test), as fine-tuning takes its data."""
    from tftune.inputs import labeled_data

    return labeled_data(data["train"], data["valid"], data["test"] if test else None)


def data_flags(data, kind):
    """The command line's data flags for the `small_data` files: `--corpus`, or `--train/--valid/--test`."""
    if kind == "pretrain":
        return ["--corpus", str(data["corpus"])]
    return ["--train", str(data["train"]), "--valid", str(data["valid"]), "--test", str(data["test"])]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, small_data):
    """One real pretrain run and one finetune run from it (GRU on the shipped GloVe subset)."""
    from tftune.recipe import load_recipe
    from tftune.finetuning import finetune
    from tftune.pretraining import pretrain

    root = tmp_path_factory.mktemp("runs")
    recipe = load_recipe("gru-glove", tiny_overrides())
    pretrain(recipe, root / "pretrain", tiny_corpus(small_data))
    finetune(recipe, root / "pretrain", root / "finetune", tiny_labeled(small_data))
    return {"recipe": recipe, "pretrain": root / "pretrain", "finetune": root / "finetune", "data": small_data,
            "corpus": tiny_corpus(small_data), "labeled": tiny_labeled(small_data)}
