"""Packaging: tftune installs as a real package, with its recipes, shipped data and declared dependencies."""

import ast
import configparser
import csv
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

import tftune
from conftest import CORPUS, PRETRAINED, REPO
from tftune.recipe import list_recipes, load_recipe, shipped_dirs

SHIPPED_RECIPES = {"rnn-glove", "lstm-glove", "gru-glove", "lstm-word2vec", "gru-word2vec"}
AUTHORS = {"austen", "chesterton", "melville", "shakespeare", "whitman"}
# What `pip wheel .` reads from the checkout: the package, its data folders and its metadata.
BUILD_INPUTS = ("tftune", "recipes", "pretrained", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")
# A real but tiny model, so that pretrain, finetune and predict take seconds each.
TINY = (
    "pretrain.epochs=1", "pretrain.num_sampled=64", "encoder.units=8", "encoder.layers=1",
    "vocab.max_size=2000", "finetune.epochs=1", "finetune.max_len=30",
)


def recipe_data_paths(recipe):
    """Every data file a recipe names: its vectors (data are arguments, not recipe settings)."""
    return [recipe.get("embeddings.path")]


def test_shipped_recipes_name_shipped_files_that_exist():
    assert {name for name, _ in list_recipes()} == SHIPPED_RECIPES
    pretrained_dir = shipped_dirs()[1]
    for name in sorted(SHIPPED_RECIPES):
        for path in recipe_data_paths(load_recipe(name)):
            assert Path(path).is_file(), f"{name}: {path}"
            assert Path(path).resolve().is_relative_to(pretrained_dir), f"{name}: {path}"


@pytest.mark.skipif(not Path(tftune.__file__).resolve().is_relative_to(REPO),
                    reason="tftune is installed, not imported from this checkout")
def test_checkout_reads_its_own_data_folders():
    # An editable install must not read a stale copy: edits to recipes/ show up at once.
    assert shipped_dirs() == ((REPO / "recipes").resolve(), (REPO / "pretrained").resolve())


def _imported_top_level_modules(package_dir):
    names = set()
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_distributions():
    """Distribution names in setup.cfg's install_requires and its extras but `test`."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "setup.cfg", encoding="utf-8")
    lines = config["options"]["install_requires"].splitlines()
    for extra, requirements in config["options.extras_require"].items():
        if extra != "test":  # what only the tests need is no dependency of the package
            lines += requirements.splitlines()
    return {_normalise(re.match(r"[A-Za-z0-9._-]+", line.strip()).group()) for line in lines if line.strip()}


def test_every_third_party_import_is_a_declared_dependency():
    imported = _imported_top_level_modules(REPO / "tftune") - set(sys.stdlib_module_names) - {"tftune"}
    assert "tensorflow" in imported  # the scan sees the package's imports at all
    providers = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    undeclared = {}
    for module in sorted(imported):
        distributions = {_normalise(name) for name in providers.get(module, ())}
        if not distributions & declared:
            undeclared[module] = sorted(distributions) or "no installed distribution provides it"
    assert not undeclared, ("imported by tftune but not declared in setup.cfg (install_requires, or an extra "
                            f"but test): {undeclared}")


def _run(command, cwd, env=None):
    result = subprocess.run([*map(str, command)], cwd=cwd, env=env, capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _pip(*args, cwd):
    offline = ["--no-index", "--no-cache-dir", "--disable-pip-version-check"]
    return _run([sys.executable, "-m", "pip", *args, *offline], cwd)


def _files_under(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc")


def _write_tiny_data(directory):
    """A 200-paragraph corpus and 150 labelled rows of the authors task."""
    corpus = directory / "corpus.txt"
    lines = CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    corpus.write_text("".join(lines), encoding="utf-8")
    train = directory / "train.csv"
    with open(PRETRAINED / "authors" / "train.csv", encoding="utf-8", newline="") as source:
        rows = list(csv.DictReader(source))[:150]
    with open(train, "w", encoding="utf-8", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": row["text"], "label": row["label"]} for row in rows)
    return corpus, train


# Run in the installed copy: where tftune and its data were found, as JSON.
LOCATE = """
import json
import tftune
from tftune.recipe import load_recipe, shipped_dirs
recipe = load_recipe()
print(json.dumps({
    "module": tftune.__file__,
    "shipped": [str(folder) for folder in shipped_dirs()],
    "paths": [recipe.get("embeddings.path")],
}))
"""


@pytest.mark.slow
def test_wheel_installs_with_recipes_and_data_and_trains(tmp_path):
    """Builds the wheel offline, installs it apart from the checkout and runs the shipped default recipe."""
    started = time.monotonic()
    # Build from a copy, so that setuptools' build/ and *.egg-info stay out of the checkout.
    source = tmp_path / "source"
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", tmp_path / "dist", ".", cwd=source)
    (wheel,) = (tmp_path / "dist").glob("tftune-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    for folder in ("recipes", "pretrained"):
        missing = {f"tftune/{folder}/{name}" for name in _files_under(source / folder)} - packed
        assert not missing, f"not in the wheel: {sorted(missing)}"
    assert any(name.endswith(".dist-info/LICENSE") for name in packed)

    # Dependencies come from this environment; the checkout and its editable install must lose to
    # the installed copy, which comes first on sys.path.
    target = tmp_path / "target"
    _pip("install", "--no-deps", "--target", target, wheel, cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    package = (target / "tftune").resolve()
    found = json.loads(_run([sys.executable, "-s", "-c", LOCATE], work, env))
    assert Path(found["module"]).resolve().is_relative_to(package), found["module"]
    assert [Path(folder) for folder in found["shipped"]] == [package / "recipes", package / "pretrained"]
    for path in found["paths"]:
        # "../pretrained/..." in the installed recipes reaches the installed data.
        assert Path(path).is_file() and Path(path).resolve().is_relative_to(package / "pretrained"), path
    shipped_before = {folder: _files_under(Path(folder)) for folder in found["shipped"]}

    tftune_cli = [target / "bin" / "tftune"]  # the console script the wheel declares
    listed = _run([*tftune_cli, "recipes", "list"], work, env)
    assert {line.split("\t")[0].removesuffix(" (default)") for line in listed.splitlines()} == SHIPPED_RECIPES
    corpus, train = _write_tiny_data(work)
    tiny = [arg for setting in TINY for arg in ("--set", setting)]
    _run([*tftune_cli, "pretrain", "--corpus", corpus, "--out", "pretrain", *tiny], work, env)
    recipe = tomllib.loads((work / "pretrain" / "recipe.toml").read_text(encoding="utf-8"))
    assert Path(recipe["embeddings"]["path"]).resolve().is_relative_to(package / "pretrained")
    _run([*tftune_cli, "finetune", "--from", "pretrain", "--train", train, "--out", "finetune", *tiny], work, env)
    predicted = _run([*tftune_cli, "predict", "finetune", "Call me Ishmael."], work, env)
    assert predicted.split("\t")[0] in AUTHORS, predicted
    assert {folder: _files_under(Path(folder)) for folder in found["shipped"]} == shipped_before
    print(f"wheel {wheel.stat().st_size / 1e6:.1f} MB; built, installed and run in "
          f"{time.monotonic() - started:.0f} s")
