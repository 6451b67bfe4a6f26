"""The examples of README.md and docs/ run as written, or say why they are not run; the site builds.

Every shell or Python block carries a marker on the line just before its opening fence:

    <!-- example: run -->              run here, in a scratch folder with links to pretrained/ and docs/
    <!-- example: needs tiny runs -->  run here (slow) where runs/lm and runs/clf are a tiny trained
                                       pretrain/finetune pair and task/*.csv its data
    <!-- example: not run (REASON) -->  not run, for the reason given

Shell blocks run under `bash -e` with this venv's `tftune` first on PATH; Python blocks run as
scripts, or as doctests when they start with `>>>`. Every other fence names its language (text,
toml, ...), so that no example hides in a fence without one.
"""

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import preloaded_python

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
EXAMPLE_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "console": "sh", "python": "python", "py": "python",
                     "pycon": "python"}
MARKER = re.compile(r"^\s*<!-- example: (run|needs tiny runs|not run \((?P<reason>.+)\)) -->\s*$")
FENCE = re.compile(r"^(\s*)(```+)(.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    language: str  # as written after the fence
    marker: str | None  # "run", "needs tiny runs", "not run (...)" or None
    code: str

    @property
    def kind(self):
        return EXAMPLE_LANGUAGES.get(self.language)

    @property
    def id(self):
        return f"{self.page.relative_to(REPO)}:{self.line}"


def fenced_blocks(page):
    """Every fenced block of a Markdown page, with the marker line before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == fence)
        marker = MARKER.match(lines[index - 1]) if index else None
        code = "\n".join(line[len(indent):] for line in lines[index + 1:end])
        blocks.append(Block(page, index + 1, language.strip(), marker and marker.group(1), code + "\n"))
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
EXAMPLES = [block for block in BLOCKS if block.kind]


def examples_marked(marker):
    return [pytest.param(block, id=block.id) for block in EXAMPLES if block.marker == marker]


def run_example(block, cwd):
    """Runs one example in `cwd` with this venv's tools first on PATH; returns the finished process."""
    for folder in ("pretrained", "docs"):  # the checkout's files that examples name
        (cwd / folder).symlink_to(REPO / folder)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if block.kind == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    elif block.code.lstrip().startswith(">>>"):
        (cwd / "example.txt").write_text(block.code, encoding="utf-8")
        command = [sys.executable, "-m", "doctest", "example.txt"]
    else:
        (cwd / "example.py").write_text(block.code, encoding="utf-8")
        command = [sys.executable, "example.py"]
    return preloaded_python.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_ran(block, result):
    assert result.returncode == 0, (
        f"the example at {block.id} failed with status {result.returncode}:\n{block.code}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )


def test_every_example_is_run_or_says_why_not():
    assert len(EXAMPLES) > 20 and {page.name for page in PAGES} >= {"README.md", "index.md", "cli.md"}
    unnamed = [block.id for block in BLOCKS if not block.language]
    assert not unnamed, f"fences without a language (write ```text for output): {unnamed}"
    unmarked = [block.id for block in EXAMPLES if block.marker is None]
    assert not unmarked, f"examples without an '<!-- example: ... -->' line before them: {unmarked}"


def run_all(marker, folder):
    """Runs the examples with `marker` three at a time, each in its own `folder()`: most of their time is start-up."""
    blocks = [param.values[0] for param in examples_marked(marker)]
    folders = [folder() for _ in blocks]
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(blocks, pool.map(run_example, blocks, folders)))


@pytest.fixture(scope="module")
def cheap_results(tmp_path_factory):
    return run_all("run", lambda: tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="module")
def trained_run_results(tmp_path_factory, tiny_runs):
    def folder():
        """Where runs/lm, runs/clf and task/*.csv are the tiny pair and its data, as the examples name them."""
        root = tmp_path_factory.mktemp("example")
        (root / "runs").mkdir()
        (root / "runs" / "lm").symlink_to(tiny_runs["pretrain"])
        (root / "runs" / "clf").symlink_to(tiny_runs["finetune"])
        (root / "task").mkdir()
        for split in ("train", "valid", "test"):
            (root / "task" / f"{split}.csv").symlink_to(tiny_runs["data"][split])
        return root

    return run_all("needs tiny runs", folder)


@pytest.mark.parametrize("block", examples_marked("run"))
def test_cheap_examples_run_as_written(block, cheap_results):
    assert_ran(block, cheap_results[block])


@pytest.mark.slow
@pytest.mark.parametrize("block", examples_marked("needs tiny runs"))
def test_examples_on_a_trained_run_run_as_written(block, trained_run_results):
    assert_ran(block, trained_run_results[block])


def test_the_readme_links_only_to_files_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", readme)
               if "://" not in target and not target.startswith("#")]
    assert any(target.startswith("docs/") for target in targets)
    missing = [target for target in targets if not (REPO / target).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed: pip install -e '.[docs]'")
def test_the_site_builds_without_a_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    recipes_page = (tmp_path / "site" / "reference" / "recipes" / "index.html").read_text(encoding="utf-8")
    # The reference pages are generated from the code: every command's help, every recipe key.
    assert "Usage: tftune finetune [OPTIONS]" in cli_page and "<!-- generated" not in cli_page
    assert "finetune.stage_lr_decay" in recipes_page and "<!-- generated" not in recipes_page
