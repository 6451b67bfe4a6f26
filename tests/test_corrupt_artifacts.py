"""Damaged artifacts: every file of a pretrain run, a finetune run and an export, truncated or
overwritten, then read by the commands that read it.

Each command must either end with exit status 2 (1 for an I/O failure) and one `error:` line that
names the damaged file (or, inside a SavedModel, its export folder), or succeed, when the format
cannot tell (a flipped byte inside a weight matrix is just another weight). An `internal error`, a
traceback or a second line fails the test. Damage is drawn from a fixed seed: one truncation and
one overwritten run of bytes per file, at seeded offsets; the commands run concurrently.
"""

import os
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import preloaded_python
from conftest import REPO

pytestmark = pytest.mark.slow

TFTUNE = [sys.executable, "-m", "tftune.cli"]
SEED = 27
FLIPPED_BYTES = 16
# finetune --from a damaged run that still loads trains for real: keep it to one short stage.
FAST_FINETUNE = ["--set", "finetune.epochs=1", "--set", "finetune.unfreeze=all"]
VOCABULARY = "assets/tokenizer/vocabulary.txt"
PRETRAIN_FILES = ["config.json", "model.weights.h5", "task.weights.h5", VOCABULARY, "run.json", "recipe.toml",
                  "metrics.json"]
# Read by pretrain --from only: finetune --from would not notice, and train for nothing.
LANGUAGE_MODEL_FILES = ("task.weights.h5", "metrics.json")
FINETUNE_FILES = ["config.json", "task.json", "preprocessor.json", "model.weights.h5", "task.weights.h5",
                  "labels.json", "run.json", VOCABULARY, "recipe.toml"]
EXPORT_FILES = ["saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001",
                "assets.extra/labels.json", "fingerprint.pb"]


def damage(path, how, rng):
    """Truncates `path` at a seeded offset, or overwrites a run of bytes there with their complement."""
    data = bytearray(path.read_bytes())
    offset = rng.randrange(len(data))
    if how == "truncate":
        del data[offset:]
    else:
        for index in range(offset, min(offset + FLIPPED_BYTES, len(data))):
            data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def damaged_copy(source, relative, how, rng, root):
    """A copy of the run (or finetune run with its export) `source`, with one file damaged."""
    copy = root / f"{source.name}-{relative.replace('/', '_')}-{how}"
    shutil.copytree(source, copy)
    damage(copy / relative, how, rng)
    return copy


def commands(tiny_runs, root):
    """(damaged file, command line, what the error line must name) for every file and damage."""
    rng = random.Random(SEED)
    data = tiny_runs["data"]
    cases = []
    for how in ("truncate", "flip"):
        for name in PRETRAIN_FILES:
            run = damaged_copy(tiny_runs["pretrain"], name, how, rng, root)
            # Both commands read the other files of a pretrain run; each damage goes to one of them.
            if how == "truncate" and name not in LANGUAGE_MODEL_FILES:
                line = ["finetune", "--from", run, "--train", data["train"], "--valid", data["valid"], *FAST_FINETUNE]
            else:
                line = ["pretrain", "--from", run, "--corpus", data["corpus"], "--set", "pretrain.epochs=0"]
            cases.append((run / name, [*line, "--out", root / f"out-{run.name}"], [run / name]))
        for name in FINETUNE_FILES:
            run = damaged_copy(tiny_runs["finetune"], name, how, rng, root)
            cases.append((run / name, ["export", run, "--out", root / f"out-{run.name}"], [run / name]))
        for name in EXPORT_FILES:
            run = damaged_copy(tiny_runs["finetune"], f"export/{name}", how, rng, root)
            named = [run / "export" / name, run / "export"]
            cases.append((run / "export" / name, ["predict", run, "a fine film", "dull"], named))
            if how == "truncate" and name == "saved_model.pb":  # evaluate loads the export as predict does
                cases.append((run / "export" / name, ["evaluate", run, "--data", data["valid"]], named))
    return cases


def run_tftune(args):
    env = {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TFTUNE_DEBUG")}
    env["PYTHONPATH"] = str(REPO)
    return preloaded_python.run([*TFTUNE, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def outcomes(tiny_runs, tmp_path_factory):
    cases = commands(tiny_runs, tmp_path_factory.mktemp("damaged"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run_tftune(case[1]), cases))
    return list(zip(cases, results))


def test_a_damaged_artifact_is_named_in_one_line_or_goes_unnoticed(outcomes):
    problems = []
    for (damaged, args, named), result in outcomes:
        errors = [line for line in result.stderr.splitlines() if not line.startswith("tftune: ")]
        what = f"{' '.join(map(str, args[:1]))} with {damaged.relative_to(damaged.parents[1])}"
        if result.returncode == 0:
            continue  # a corruption the format cannot detect: the command must then just work
        if result.returncode not in (1, 2) or len(errors) != 1 or not errors[0].startswith("error: "):
            problems.append(f"{what}: exit {result.returncode}: {result.stderr[-600:]}")
        elif not any(str(path) in errors[0] for path in named):
            problems.append(f"{what}: the error does not name {named[0]}: {errors[0]}")
    print("\n".join(f"{result.returncode} {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}"
                    for _, result in outcomes))  # the catalogue, with `pytest -s`
    assert not problems, "\n".join(problems)
