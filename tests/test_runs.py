"""Run directories: no command writes over what it reads, and one owner of the run format.

The first part is `tftune.output_paths.check_output_paths` on plain paths; nothing there trains. The same
cases through the real command line, with the inputs checked byte for byte afterwards, are in
test_cli_errors.py ("outputs over inputs"). The second part is `PretrainRun` / `FinetuneRun`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, snapshot
from tftune.errors import RunError
from tftune.recipe import load_recipe, shipped_dirs
from tftune.output_paths import Input, check_export_paths, check_output_paths, check_run_paths, run_outputs
from tftune.runs import (
    FORMAT_VERSION,
    FinetuneRun,
    PretrainRun,
    Run,
    RunFile,
    check_writable_target,
    checkpoint_published,
    write_json,
)
from tftune.run_lock import exclusive_output

INPUT = "(an input of this command"


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A working directory with runs, data files, and symbolic links to some of them."""
    monkeypatch.chdir(tmp_path)
    files = ["runs/lm/run.json", "runs/lm-back/run.json", "runs/clf/run.json", "runs/clf/task.weights.h5",
             "runs/clf/export/saved_model.pb", "data/corpus.txt", "data/train.csv", "elsewhere.csv"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"{name}\n")
    (tmp_path / "lm-link").symlink_to("runs/lm")
    (tmp_path / "train-link.csv").symlink_to("data/train.csv")
    (tmp_path / "data" / "outside-link.csv").symlink_to("../elsewhere.csv")
    return tmp_path


def refusal(outputs, inputs):
    with pytest.raises(RunError) as error:
        check_output_paths(outputs, inputs)
    return str(error.value)


@pytest.mark.parametrize(
    "out, source, relation",
    [
        ("runs/lm", "runs/lm", "is"),
        ("runs/lm/", "./runs/lm", "is"),
        ("{root}/runs/lm", "runs/lm", "is"),  # absolute against relative
        ("runs", "runs/lm", "contains"),  # a parent
        ("data", "data/corpus.txt", "contains"),
        (".", "data/corpus.txt", "contains"),
        ("runs/lm/continued", "runs/lm", "lies inside"),  # a child that does not exist yet
        ("runs/lm/vocab.txt", "runs/lm", "lies inside"),
        ("data/corpus.txt", "data/corpus.txt", "is"),  # a file
        ("runs/clf/../lm", "runs/lm", "is"),  # ..
        ("data/../runs", "runs/lm", "contains"),
        ("lm-link", "runs/lm", "is"),  # an output through a symbolic link
        ("lm-link/continued", "runs/lm", "lies inside"),
        ("runs/lm", "lm-link", "is"),  # an input through a symbolic link
        ("data", "train-link.csv", "contains"),
        ("data", "data/outside-link.csv", "contains"),  # a link inside the output, to a file outside it
    ],
)
def test_an_output_over_an_input_is_refused(tree, out, source, relation):
    out = out.format(root=tree)
    message = refusal([("--out", out)], [("--from run", source)])
    assert message.startswith(f"--out {out}: {relation} the --from run {source} {INPUT}")
    assert message.endswith("); choose another --out")


def test_the_message_says_which_symbolic_link_led_there(tree):
    assert refusal([("--out", "lm-link")], [("--from run", "runs/lm")]) == (
        f"--out lm-link: is the --from run runs/lm (an input of this command; through a symbolic link, lm-link is "
        f"{tree / 'runs/lm'}); choose another --out"
    )
    message = refusal([("--out", "data")], [("--train file", "train-link.csv")])
    assert message.endswith(f"link, train-link.csv is {tree / 'data/train.csv'}); choose another --out")


def test_the_first_input_in_the_way_is_named(tree):
    message = refusal([("--out", "runs")], [("--from run", "runs/lm"), ("--from run", "runs/lm-back")])
    assert message.startswith(f"--out runs: contains the --from run runs/lm {INPUT}")


def test_what_a_run_writes_beside_out_counts_too(tree):
    (tree / "runs/.new.checkpoint").mkdir()
    assert refusal(run_outputs("runs/new"), [("--train file", "runs/.new.checkpoint/train.csv")]) == (
        "--out runs/new: its checkpoint folder runs/.new.checkpoint contains the --train file "
        "runs/.new.checkpoint/train.csv (an input of this command); choose another --out"
    )
    assert refusal(run_outputs("runs/new"), [("--train file", "runs/.new.checkpoint")]).startswith(
        "--out runs/new: its checkpoint folder runs/.new.checkpoint is the --train file"
    )
    assert refusal(run_outputs("runs/new"), [("--corpus file", "runs/.new.lock")]).startswith(
        "--out runs/new: its lock file runs/.new.lock is the --corpus file"
    )
    assert run_outputs(".") == [("--out", ".")]  # nothing beside it, and no error


def test_the_shipped_data_is_an_input_of_every_command(tree):
    for folder in shipped_dirs():
        assert refusal([("--out", folder / "my-run")], []).startswith(
            f"--out {folder / 'my-run'}: lies inside the shipped data folder {folder} {INPUT}"
        )
        assert f"is the shipped data folder {folder} " in refusal([("--plot", folder)], [])
        assert f"--out {folder.parent}: contains the shipped data folder " in refusal([("--out", folder.parent)], [])


@pytest.mark.parametrize(
    "outputs, inputs",
    [
        # A run beside its --from run (a shared prefix is not a parent).
        (run_outputs("runs/clf-2"),
         [("--from run", "runs/lm"), ("--from run", "runs/lm-back"), ("--train file", "data/train.csv")]),
        (run_outputs("runs/l"), [("--from run", "runs/lm")]),
        # --out in runs/, inputs in the shipped folders.
        (run_outputs("runs/new-lm"), [("--corpus file", folder / "corpus.txt") for folder in shipped_dirs()]),
        # A plot beside the evaluated run, or beside the export in the run.
        ([("--plot", "runs/clf-confusion.png")], [("evaluated model", "runs/clf"), ("--data file", "data/train.csv")]),
        ([("--plot", "runs/clf/confusion.png")], [("evaluated model", "runs/clf/export")]),
        # A run's export/ is not read by the export: it may be written (the default --out of `tftune export`).
        ([("--out", "runs/clf/export")], [Input("exported run", "runs/clf", unread=("export",))]),
        ([("--out", "runs/clf/export/2")], [Input("exported run", "runs/clf", unread=("export",))]),
    ],
)
def test_outputs_beside_the_inputs_pass(tree, outputs, inputs):
    check_output_paths(outputs, inputs)


@pytest.mark.parametrize(
    "out, relation",
    [
        ("runs/clf", "is"),
        ("runs", "contains"),
        ("runs/clf/task.weights.h5", "lies inside"),
        ("runs/clf/logs", "lies inside"),
    ],
)
def test_export_may_not_write_over_the_run(tree, out, relation):
    with pytest.raises(RunError, match=f"^--out {out}: {relation} the exported run runs/clf "):
        check_export_paths("runs/clf", out)


def test_export_may_write_the_run_s_own_export_folder(tree):
    check_export_paths("runs/clf", "runs/clf/export")  # the default --out
    check_export_paths("runs/clf", "serving/clf/1")


def recipe_with(*overrides):
    return load_recipe("gru-glove", list(overrides))


CORPUS = [("--corpus file", "data/corpus.txt")]
TASK = [("--train file", "data/train.csv")]


def test_a_pretrain_run_reads_its_corpus_vectors_recipe_and_from_run(tree):
    recipe = recipe_with()
    check_run_paths(recipe, "runs/new", data_files=CORPUS)
    with pytest.raises(RunError, match="^--out data: contains the --corpus file data/corpus.txt "):
        check_run_paths(recipe, "data", data_files=CORPUS)
    with pytest.raises(RunError, match="^--out runs/lm/more: lies inside the --from run runs/lm "):
        check_run_paths(recipe, "runs/lm/more", ["runs/lm"], data_files=CORPUS)
    vectors = recipe_with("embeddings.path=vectors/glove.txt")
    with pytest.raises(RunError, match=r"^--out vectors: contains the vectors file \(embeddings.path\) "):
        check_run_paths(vectors, "vectors", data_files=CORPUS)
    (tree / "recipes").mkdir()
    (tree / "recipes/mine.toml").write_text(recipe.to_toml())
    with pytest.raises(RunError, match="^--out recipes: contains the recipe file recipes/mine.toml "):
        check_run_paths(load_recipe("recipes/mine.toml"), "recipes", data_files=CORPUS)


def test_a_finetune_run_reads_its_labeled_files_and_every_from_run(tree):
    recipe = recipe_with()
    task = [*TASK, ("--test file", str(tree / "elsewhere.csv"))]
    check_run_paths(recipe, "runs/clf-2", ["runs/lm", "runs/lm-back"], data_files=task)
    with pytest.raises(RunError, match="^--out data: contains the --train file "):
        check_run_paths(recipe, "data", ["runs/lm"], data_files=task)
    with pytest.raises(RunError, match=f"^--out {re.escape(str(tree))}: contains the --from run runs/lm "):
        check_run_paths(recipe, tree, ["runs/lm"], data_files=task)
    with pytest.raises(RunError, match="^--out elsewhere.csv: is the --test file "):
        check_run_paths(recipe, "elsewhere.csv", ["runs/lm"], data_files=task)
    with pytest.raises(RunError, match="^--out runs/lm-back: is the --from run runs/lm-back "):
        check_run_paths(recipe, "runs/lm-back", ["runs/lm", "runs/lm-back"], data_files=task)
    # Only the files given count: here the task lies elsewhere.
    check_run_paths(recipe, "data", ["runs/lm"], data_files=[("--train file", "runs/train.csv")])


def test_resume_reads_the_checkpoint_s_own_recipe(tree):
    checkpoint = tree / "runs/.new.checkpoint"
    checkpoint.mkdir()
    (checkpoint / "recipe.toml").write_text(recipe_with().to_toml())
    recipe = load_recipe("runs/.new.checkpoint/recipe.toml")
    check_run_paths(recipe, "runs/new", resume=True)
    # Without --resume, a new run over the checkpoint (--force) would delete it.
    with pytest.raises(RunError, match="^--out runs/new: its checkpoint folder runs/.new.checkpoint contains the "):
        check_run_paths(recipe, "runs/new")
    with pytest.raises(RunError, match="^--out runs: contains the recipe file "):
        check_run_paths(recipe, "runs", resume=True)  # another run's checkpoint


def test_the_python_api_checks_before_anything_is_written(tree):
    from tftune.finetuning import finetune, reexport  # imports TensorFlow
    from tftune.inputs import corpus_data, labeled_data
    from tftune.pretraining import pretrain

    recipe = recipe_with("precision.policy=float32")
    corpus, task = corpus_data(Path("data/corpus.txt")), labeled_data("data/train.csv")
    before = snapshot(tree)
    with pytest.raises(RunError, match="^--out runs/lm: is the --from run runs/lm "):
        pretrain(recipe, "runs/lm", corpus, force=True, from_run="runs/lm")
    with pytest.raises(RunError, match="^--out data: contains the --corpus file "):
        pretrain(recipe, "data", corpus, force=True)
    with pytest.raises(RunError, match="^--out runs/lm-back: is the --from run runs/lm-back "):
        finetune(recipe, ["runs/lm", "runs/lm-back"], "runs/lm-back", task, force=True)
    with pytest.raises(RunError, match="^--out runs/clf: is the exported run runs/clf "):
        reexport("runs/clf", "runs/clf", force=True)
    assert snapshot(tree) == before


# === The run-directory format ===


def test_runs_open_as_they_were_written(tiny_runs):
    lm, clf = PretrainRun.open(tiny_runs["pretrain"]), FinetuneRun.open(tiny_runs["finetune"])
    assert lm.info["kind"] == "pretrain" and clf.info["kind"] == "finetune"
    assert lm.info["format"] == clf.info["format"] == FORMAT_VERSION
    assert clf.vocab.tokens[: len(lm.vocab)] == lm.vocab.tokens and clf.tokenizer.get_config() == lm.tokenizer.get_config()
    assert lm.recipe == tiny_runs["recipe"] and clf.labels() and lm.metrics()["valid"]["perplexity"] > 1
    assert (clf.export / "saved_model.pb").is_file()


def test_a_run_of_the_wrong_kind_or_a_newer_format_is_one_clear_error(tiny_runs, tmp_path):
    with pytest.raises(RunError, match="is a finetune run, expected a pretrain run$"):
        PretrainRun.open(tiny_runs["finetune"])
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "run.json").write_text(json.dumps({"kind": "pretrain", "format": FORMAT_VERSION + 1}))
    with pytest.raises(RunError, match=rf"newer: written in run format {FORMAT_VERSION + 1}, newer than this "
                                       rf"tftune reads \({FORMAT_VERSION}\); upgrade tftune$"):
        PretrainRun.open(newer)


def test_a_run_of_format_1_says_how_to_convert_it_and_an_incomplete_one_what_it_misses(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"kind": "pretrain"}))  # before the format field: format 1
    with pytest.raises(RunError, match=rf"^{tmp_path}: written in run format 1; convert it once with "
                                       rf"`tftune convert {tmp_path} --out NEW_DIR`$"):
        PretrainRun.open(tmp_path, require=())
    (tmp_path / "run.json").write_text(json.dumps({"kind": "pretrain", "format": FORMAT_VERSION}))
    with pytest.raises(RunError, match="incomplete pretrain run, missing recipe.toml, metrics.json, "
                                       "assets/tokenizer/vocabulary.txt, config.json, task.json, preprocessor.json, "
                                       "model.weights.h5, task.weights.h5, metadata.json$"):
        PretrainRun.open(tmp_path)


def test_a_failed_write_leaves_nothing_and_a_good_one_publishes_whole(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with PretrainRun.create(tmp_path / "lm") as run:
            run.write_metrics({"valid": {"perplexity": 1 / 0}})
    assert list(tmp_path.iterdir()) == []
    with PretrainRun.create(tmp_path / "lm") as run:
        run.write_metrics({})
    assert run.path == tmp_path / "lm" and run.metrics() == {}
    assert [p.name for p in tmp_path.iterdir()] == ["lm"]


# Files of other formats that share a run file's name: the checkpoint folder's copy of the recipe and
# its model's weights (`tftune.checkpoints`) and the SavedModel's labels (`tftune.export`, in assets.extra/).
OTHER_FORMATS = {("checkpoints.py", "recipe.toml"), ("checkpoints.py", "model.weights.h5"),
                 ("export.py", "labels.json")}


def test_only_tftune_runs_names_the_files_of_a_run():
    names = {attr.name for cls in (Run, PretrainRun, FinetuneRun) for attr in vars(cls).values()
             if isinstance(attr, RunFile) and "." in attr.name}  # files; "export" and "logs" are common words
    package = Path(__file__).resolve().parents[1] / "tftune"
    named = [(module.name, name) for module in sorted(package.glob("*.py")) if module.name != "runs.py"
             for name in names if f'"{name}"' in module.read_text(encoding="utf-8")]
    assert set(named) <= OTHER_FORMATS, named


# === The lock, and what a process that died left behind ===


def test_a_second_writer_of_the_same_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    with exclusive_output(tmp_path / "run", force=False):
        assert (tmp_path / ".run.lock").is_file()
        with pytest.raises(RunError, match="another tftune process is writing this run"):
            with exclusive_output(tmp_path / "run", force=False):
                pass
    assert list(tmp_path.iterdir()) == []


def test_debris_of_a_dead_process_is_cleaned_up_and_said_in_one_line(tmp_path, caplog):
    (tmp_path / ".run.lock").write_text("")  # the lock file of a process that died (its lock went with it)
    for staging in (".run.tmp-abc123", ".run.checkpoint.tmp-def456"):
        (tmp_path / staging).mkdir()
        (tmp_path / staging / "model.weights.h5").write_bytes(b"half")
    (tmp_path / ".run.old-4242").mkdir()  # died between moving the old run aside and publishing the new one
    (tmp_path / ".run.old-4242" / "run.json").write_text(json.dumps({"kind": "pretrain"}))
    (tmp_path / ".other.tmp-xyz").mkdir()  # another output's: not this command's business
    with caplog.at_level("INFO", logger="tftune"):
        with exclusive_output(tmp_path / "run", force=True):
            pass
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.tmp-xyz", "run"]
    assert (tmp_path / "run" / "run.json").is_file()
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"{tmp_path / 'run'}: cleaned up after a process that stopped while writing it")
    assert all(name in line for name in ("lock", ".run.tmp-abc123", ".run.checkpoint.tmp-def456", ".run.old-4242"))


def test_the_checkpoint_of_a_published_run_is_removed_and_resume_has_nothing_left_to_do(tmp_path):
    checkpoint = tmp_path / ".run.checkpoint"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"kind": "pretrain", "run_id": "abc"}))
    with PretrainRun.create(tmp_path / "run") as run:
        run.checkpoint_run_id = "abc"
        run.write_metrics({"valid": {"perplexity": 9.5}})
        write_json(run.info_file, {"kind": "pretrain", "checkpoint_run_id": "abc"})
    assert checkpoint_published(tmp_path / "run")
    with pytest.raises(RunError, match="exists and is not empty"):  # without --resume, the run is in the way
        check_writable_target(tmp_path / "run", force=False)
    check_writable_target(tmp_path / "run", force=False, resume=True)
    with exclusive_output(tmp_path / "run", force=False, resume=True) as published:
        assert published
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_checkpoint_of_another_run_beside_a_published_one_is_kept(tmp_path):
    """`--force` over an earlier run, interrupted: its checkpoint is the new run's, to resume."""
    checkpoint = tmp_path / ".run.checkpoint"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"kind": "pretrain", "run_id": "new"}))
    (tmp_path / "run").mkdir()
    write_json(tmp_path / "run" / "run.json", {"kind": "pretrain", "checkpoint_run_id": "old"})
    with exclusive_output(tmp_path / "run", force=True) as published:
        assert not published
    assert (checkpoint / "state.json").is_file()


NO_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on a platform without it: importing it raises ImportError
import tftune
import tftune.run_lock  # the run lock's module: its lock library is imported only to take a lock
from tftune.cli import main
main(sys.argv[1:])
"""


def test_tftune_imports_and_runs_lock_free_commands_without_fcntl():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", NO_FCNTL, "recipes", "list"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gru-glove" in done.stdout
