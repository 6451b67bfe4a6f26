"""Accuracy: does tftune's transfer learning beat frozen-vector baselines, and what does each part give?

Test accuracy and macro-F1 on two real tasks from `../shared/data` (skipped with a message when
absent): TREC-6 (5,452 training questions, 10% of them held out for validation with the seed;
500 test questions; the coarse label) and SST-2 (6,920 / 872 / 1,821 sentences). The task
splits are written as `text,label` CSV files in a temporary directory for tftune.

Every row runs once per seed of `--seeds`; the seed goes to `pretrain.seed` and `finetune.seed`
of its runs, the Keras baseline, TREC-6's validation split and the low-data subsets. A row keeps
each seed's figures, and their mean and (sample) standard deviation.

The rows run tftune as its command line does, through `tftune.pretraining.pretrain` and `finetune`: a
step that continues from a run (`--from RUN` without `--recipe`) loads that run's `recipe.toml`
with the CLI's `[distribute]` reset (`tftune.recipe.LOCAL_DISTRIBUTE`), then the step's own
overrides, then `--set`. GENERAL is the general-domain LM, `--general` (default: the shipped
preset `lstm-glove-general`); the rows that need it are skipped, with the reason, when it is
missing. Rows:

- **keras** (the plain baseline, run here): `TextVectorization` → frozen `Embedding` of shipped
  vectors (aligned to the vectorizer's vocabulary with `tftune.embeddings.align`) → a recurrent
  layer of 256 units → `Dense(softmax)`, Adam, early stopping on the validation accuracy with the
  best weights restored (`bench.accuracy_keras`). Its cell and vectors are those of the baseline
  recipe (below), or `--keras-cell` and `--keras-vectors`: GloVe 50d, the top 20k words, for a
  GloVe recipe; word2vec 300d, top 5k, for a word2vec one. Default: LSTM on GloVe.
- **reference** (published, not run): Kim (2014) CNN-static on frozen 300-d word2vec.
- **tftune** (the headline): what a user runs,
  `tftune pretrain --from GENERAL --corpus TASK/train.csv --out lm`, then
  `tftune finetune --from lm --train TASK/train.csv --valid TASK/valid.csv --test TASK/test.csv`:
  the target-domain LM step with GENERAL's recipe, then fine-tuning with the LM run's.
- **small_lm** (also the `no_general_lm` ablation: no shipped model, a small LM of one's own):
  `tftune pretrain --recipe RECIPE` (`--recipe`, default `lstm-glove`, on its own corpus, seed 0;
  one run shared by every task and seed), then the two steps of `tftune` from it.
- **scratch** (no language model): `tftune pretrain --recipe BASELINE` on the task's training
  text with `pretrain.epochs=0` (no `--from`): a vocabulary of the task's text and a random encoder
  of BASELINE's size; then fine-tuning with that run's recipe. BASELINE, the recipe the no-LM rows
  (scratch, keras) follow, is GENERAL's (`--baselines-from general`, the default) or RECIPE
  (`--baselines-from recipe`: the recipes that have no general LM).
- ablations, each changing one thing against `tftune`:
  **no_awd**, the AWD-LSTM regularization off (`AWD_OFF`: weight, embedding, input, hidden and
  output dropout, `pretrain.ar`, `pretrain.tar`) in the target-domain step (a run of its own) and
  in fine-tuning (which takes its dropout rates from the run it starts from: there they restate
  the LM run's); **closed_vocab**, `vocab.open=false` in both (a run of its own);
  **all_layers**, `finetune.unfreeze=all` from the `tftune` row's LM run; **no_lm_finetune**,
  fine-tuning straight from GENERAL, with its recipe, without the target-domain step. The first
  three are skipped when their overrides leave the recipe as it is (`all_layers` with a recipe
  that has `finetune.unfreeze = "all"`, say): they would be the `tftune` row again.
- **bidirectional** (run only when `--rows` names it): ULMFiT's forward and backward ensemble, the
  user's two commands with `--bidirectional`: `tftune pretrain --from GENERAL --bidirectional
  --corpus TASK/train.csv` (GENERAL and the backward partner its `run.json` names, each through
  the target-domain step), then `tftune finetune --from` that run (one classifier per direction,
  their probabilities averaged). Each member's own figures are the rows `bidirectional_forward` and
  `bidirectional_backward` (trained once, in this row; their seconds are the row's). With
  --smoke, a tiny backward LM trained like the small one stands in for the partner.
- **low_data** (TREC-6 only): 10% and 25% of the training labels (stratified, seeded), fine-tuned
  from the `tftune` row's LM run (its target-domain step read all the training text, without
  labels) and from the `scratch` row's: the rows `low_data_10pct_tftune`, `low_data_10pct_scratch`,
  and so on.

For each seed, a tftune row records its steps: the recipe each step loaded (`preset recipe`,
`LM run recipe` or `shipped recipe NAME`), its overrides (`$TMP` stands for the temporary
directory), the run it continued from, the LM's perplexity or the classifier's epochs, and the
seconds. A row's seconds are those of its steps, the small LM's pretraining included; the
general LM ships, its training is not counted.

`--resume-dir DIR` saves each finished (task, row, seed) result in DIR at once and skips those
already there (`bench.accuracy_store`): rerunning the same command resumes a stopped run.

`--smoke` trains a tiny general LM in the temporary directory (`SMOKE_LM_OVERRIDES`: the shipped
recipe at 1 × 16 units, one epoch of 4,000 tokens of the shipped corpus, one fine-tuning epoch of
every layer), which is its small LM too and whose recipe the other runs inherit (so `all_layers`
is skipped), and runs every row on TREC-6 (one low-data point) and the baselines and `tftune` on
SST-2, at 120 / 30 / 50 examples. Its small_lm row takes the tftune row's steps (`TaskRuns`).

Example:

```sh
python -m bench.accuracy --tasks trec6 --rows keras,tftune,scratch --seeds 0,1,2
python -m bench.accuracy --recipe gru-word2vec --baselines-from recipe --rows small_lm,scratch,keras \
    --seeds 0,1,2 --resume-dir runs/accuracy-gru-word2vec
python -m bench.accuracy --tasks trec6,sst2 --rows bidirectional --seeds 0,1,2 --resume-dir runs/accuracy-bidirectional
python -m bench.accuracy --smoke
```
"""

import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import accuracy_keras, common
from bench.accuracy_store import ConfigMismatch, ResultStore

NAME = "accuracy"
TASKS = ("trec6", "sst2")
ROWS = ("keras", "reference", "tftune", "small_lm", "scratch", "no_awd", "closed_vocab", "all_layers",
        "no_lm_finetune", "low_data")
# Rows run only when named in --rows: they train twice the models of the tftune row.
EXTRA_ROWS = ("bidirectional",)
BIDIRECTIONAL = "bidirectional"
DIRECTIONS = ("forward", "backward")
GENERAL = "lstm-glove-general"
AWD_OFF = ["encoder.weight_dropout=0", "encoder.embedding_dropout=0", "encoder.input_dropout=0",
           "encoder.hidden_dropout=0", "encoder.output_dropout=0", "pretrain.ar=0", "pretrain.tar=0"]
CLOSED_VOCAB = ["vocab.open=false"]
# The LM runs of a task and seed: (the shared run whose recipe the step loads: "general" or "small",
# whether it continues from that run (`--from`; else `--recipe RUN/recipe.toml`), its own overrides
# besides the corpus and the seed).
LM_STEPS = {
    "tftune": ("general", True, []),
    "small_lm": ("small", True, []),
    "no_awd": ("general", True, AWD_OFF),
    "closed_vocab": ("general", True, CLOSED_VOCAB),
    "scratch": ("baseline", False, ["pretrain.epochs=0"]),
    BIDIRECTIONAL: ("general", True, []),  # with the general LM's backward partner: `pretrain --bidirectional`
}
# Rows fine-tuned by tftune: (the LM run, or shared run, they start from, finetune overrides of their own, description).
TFTUNE_ROWS = {
    "tftune": ("tftune", [], "general LM, target-domain LM step, fine-tuning: the user's two commands"),
    "small_lm": ("small_lm", [], "a small LM of the shipped recipe instead of the general one (the no_general_lm "
                                 "ablation)"),
    "scratch": ("scratch", [], "no LM: the task's vocabulary, a random encoder as in {baseline}"),
    "no_awd": ("no_awd", AWD_OFF, "as tftune, AWD-LSTM dropouts and AR/TAR off in both steps"),
    "closed_vocab": ("closed_vocab", CLOSED_VOCAB, "as tftune, closed vocabulary in both steps"),
    "all_layers": ("tftune", ["finetune.unfreeze=all"], "as tftune, every layer trained from the first epoch"),
    "no_lm_finetune": ("general", [], "as tftune, without the target-domain LM step"),
    BIDIRECTIONAL: (BIDIRECTIONAL, [], "as tftune for the general LM and its backward partner "
                                       "(`pretrain --bidirectional`), one classifier each, their probabilities "
                                       "averaged"),
}
# The members of the bidirectional row's ensemble, reported as rows of their own (trained in it, not again).
MEMBER_ROWS = {f"{BIDIRECTIONAL}_{direction}": f"the {direction} member of the bidirectional row's ensemble, alone"
               for direction in DIRECTIONS}
# Rows that change one setting of the tftune row: skipped when the setting is the recipe's already.
ABLATIONS = ("no_awd", "closed_vocab", "all_layers")
LOW_DATA_TASK = "trec6"
LOW_DATA_FRACTIONS = (0.1, 0.25)
LOW_DATA_ARMS = ("tftune", "scratch")
REFERENCE = {
    "description": "Kim (2014) CNN-static, frozen word2vec 300d (published, not run)",
    "accuracy": {"trec6": 0.928, "sst2": 0.868},
}

FULL = {"train": None, "valid": None, "test": None, "keras_units": accuracy_keras.UNITS, "keras_epochs": 30,
        "keras_patience": 3, "keras_batch_size": 32, "ablation_tasks": TASKS, "low_data_fractions": LOW_DATA_FRACTIONS}
# --smoke runs every code path once: the ablations and one low-data point on TREC-6 only.
SMOKE = {"train": 120, "valid": 30, "test": 50, "keras_units": 16, "keras_epochs": 1, "keras_patience": 1,
         "keras_batch_size": 32, "ablation_tasks": ("trec6",), "low_data_fractions": LOW_DATA_FRACTIONS[1:]}
# --smoke's general LM (its small LM too): the shipped recipe with these overrides, on this many
# tokens of the shipped corpus. The runs that continue from it inherit its recipe, sizes included
# (one fine-tuning epoch of every layer: gradual unfreezing would add a stage to each).
SMOKE_LM_TOKENS = 4000
SMOKE_LM_OVERRIDES = ["encoder.units=16", "encoder.layers=1", "vocab.max_size=3000", "pretrain.seq_len=20",
                      "pretrain.batch_size=16", "pretrain.epochs=1", "finetune.max_len=60", "finetune.batch_size=16",
                      "finetune.epochs=1", "finetune.unfreeze=all"]


def add_arguments(parser):
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks [default: {','.join(TASKS)}]")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows [default: {','.join(ROWS)}; also: {','.join(EXTRA_ROWS)}]")
    parser.add_argument("--general", default=GENERAL, metavar="NAME_OR_RUN",
                        help=f"the general-domain LM: a shipped preset's name or a pretrain run directory "
                             f"[default: {GENERAL}; --smoke trains a tiny one]")
    parser.add_argument("--recipe", default="lstm-glove",
                        help="shipped recipe (name or file) of the small_lm row's own LM [default: lstm-glove]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="tftune recipe override applied last to every tftune run, after each row's own "
                             "(repeatable)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", default="0",
                       help="comma-separated seeds; every row runs once per seed (its runs, the Keras baseline, "
                            "TREC-6's validation split, the low-data subsets) [default: 0]")
    seeds.add_argument("--seed", type=int, default=None, help="one seed: the same as --seeds N")
    parser.add_argument("--keep-runs", type=Path, default=None,
                        help="write the tftune runs and task files here instead of a temporary directory")
    parser.add_argument("--resume-dir", type=Path, default=None, metavar="DIR",
                        help="save each finished (task, row, seed) result in DIR at once, and skip those already "
                             "there: rerun the same command to resume (bench/accuracy_store.py)")
    parser.add_argument("--baselines-from", choices=("general", "recipe"), default="general",
                        help="whose recipe the no-LM rows follow: scratch's encoder and the keras row's cell and "
                             "vectors; general = --general's, recipe = --recipe's [default: general]")
    parser.add_argument("--keras-cell", choices=tuple(accuracy_keras.CELLS), default=None,
                        help="the keras row's cell [default: that of the --baselines-from recipe]")
    parser.add_argument("--keras-vectors", choices=tuple(accuracy_keras.VECTORS), default=None,
                        help="the keras row's frozen vectors, shipped GloVe 50d (top 20k) or word2vec 300d (top 5k) "
                             "[default: those of the --baselines-from recipe]")


# === Tasks ===


def _split(n, fraction, seed):
    """(held-out, kept) index lists: a seeded `fraction` of `range(n)` and the rest."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    n_held = round(n * fraction)
    return sorted(order[:n_held].tolist()), sorted(order[n_held:].tolist())


def _take(split, indices):
    texts, labels = split
    return [texts[i] for i in indices], [labels[i] for i in indices]


def stratified_subset(split, fraction, seed):
    """A seeded `fraction` of each label's examples (at least one), in the original order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(split[1])
    picked = []
    for label in sorted(set(split[1])):
        members = np.flatnonzero(labels == label)
        picked += rng.choice(members, max(1, round(len(members) * fraction)), replace=False).tolist()
    return _take(split, sorted(picked))


def load_task(name, seed, sizes):
    """`{"train", "valid", "test": (texts, labels), "source"}` of a task, or a string saying why it is skipped."""
    import numpy as np

    from bench.finetune_throughput import _read_prefixed_lines

    if name == "trec6":
        folder, files = common.SHARED_DATA / "trec6", ("train_5500.label", "TREC_10.label")
        # `COARSE:fine question ...`; one byte of the training file is not UTF-8.
        encoding, label_of = "latin-1", (lambda field: field.split(":", 1)[0])
    else:
        folder, files = common.SHARED_DATA / "sst", ("stsa.binary.train", "stsa.binary.dev", "stsa.binary.test")
        encoding, label_of = "utf-8", str
    paths = [folder / file for file in files]
    missing = [common.display_path(path) for path in paths if not path.is_file()]
    if missing:
        return f"{', '.join(missing)} not found"
    splits = [_read_prefixed_lines(path, encoding, label_of) for path in paths]
    if name == "trec6":
        held, kept = _split(len(splits[0][0]), 0.1, seed)
        splits = [_take(splits[0], kept), _take(splits[0], held), splits[1]]
    task = {"source": [common.display_path(path) for path in paths]}
    for split_name, split in zip(("train", "valid", "test"), splits):
        if sizes[split_name] is not None:  # --smoke: a seeded sample
            split = _take(split, sorted(np.random.default_rng(seed).permutation(len(split[0]))[: sizes[split_name]]))
        task[split_name] = split
    return task


def write_task(task, folder):
    """Writes the splits as `text,label` CSV files; returns their paths."""
    from bench.serving import _write_rows

    folder.mkdir(parents=True, exist_ok=True)
    return {split: _write_rows(zip(*task[split]), folder / f"{split}.csv") for split in ("train", "valid", "test")}



# === tftune runs ===


class Runner:
    """Runs `tftune pretrain` and `tftune finetune` as the CLI does, and records each step.

    A step's recipe is a shipped recipe (by name or file) or a run directory's `recipe.toml`;
    when a step continues from a run without a recipe of its own (`--from RUN`), the CLI resets
    the `[distribute]` section first, and so does this. `--set` comes last. Records show the
    temporary directory (`root`) as `$TMP`.
    """

    def __init__(self, root, overrides):
        self.root, self.last = Path(root), list(overrides)
        self.general = None  # the general LM's run directory, once known: its recipe is the "preset recipe"

    def where(self, path):
        """A run or file as recorded: `$TMP/...` inside `root`, else as `common.display_path` shows it."""
        path = Path(path).resolve()
        if path.is_relative_to(self.root):
            return "$TMP/" + path.relative_to(self.root).as_posix()
        return common.display_path(path)

    def shown(self, overrides):
        texts = [item if isinstance(item, str) else f"{item[0]}={self.shown_value(item[1])}" for item in overrides]
        return [text.replace(str(self.root), "$TMP") for text in texts]

    @staticmethod
    def shown_value(value):
        """A `(key, value)` override's value as `--set` would take it: bare words bare, the rest as JSON."""
        return value if isinstance(value, str) and value.isidentifier() else json.dumps(value)

    def load(self, source, overrides, reset):
        """`(recipe, record)`: `source` is a shipped recipe's name or file, or a run directory (its recipe)."""
        from tftune.recipe import LOCAL_DISTRIBUTE
        from tftune.recipe import load_recipe
        from tftune.runs import PretrainRun

        overrides = [*(LOCAL_DISTRIBUTE if reset else []), *overrides, *self.last]
        if isinstance(source, str):
            recipe, shown = load_recipe(source, overrides), f"shipped recipe {source}"
        else:
            kind = "preset" if source == self.general else "LM run"
            recipe, shown = load_recipe(PretrainRun(source).recipe_file, overrides), f"{kind} recipe {self.where(source)}"
        return recipe, {"recipe": shown, "overrides": self.shown(overrides)}

    def pretrain(self, out, overrides, corpus, recipe=None, from_run=None):
        """`tftune pretrain [--recipe RECIPE] [--from RUN] --corpus ... --set ... --out OUT`: the step's record.

        Without `recipe`, the recipe is `from_run`'s (a run directory may also be the `recipe`).
        """
        import keras

        from tftune.inputs import corpus_data
        from tftune.pretraining import pretrain

        loaded, record = self.load(from_run if recipe is None else recipe, overrides, reset=recipe is None)
        keras.backend.clear_session()
        started = time.perf_counter()
        metrics = pretrain(loaded, out, corpus_data([Path(path) for path in corpus]), force=True, from_run=from_run)
        return self.pretrain_record("pretrain", from_run, record, corpus, out, metrics,
                                    metrics["valid"]["perplexity"], started)

    def pretrain_bidirectional(self, out, overrides, corpus, from_run):
        """`tftune pretrain --from RUN --bidirectional --corpus ... --set ... --out OUT`: the step's record."""
        import keras

        from tftune.bidirectional import plan_bidirectional, run_bidirectional

        _, record = self.load(from_run, overrides, reset=True)
        keras.backend.clear_session()
        started = time.perf_counter()
        plan = plan_bidirectional([Path(path) for path in corpus], out=out, from_run=from_run,
                                  settings=[*overrides, *self.last], force=True)
        metrics = run_bidirectional(plan)
        perplexity = {direction: metrics[direction]["valid"]["perplexity"] for direction in metrics}
        return self.pretrain_record("pretrain --bidirectional", from_run, record, corpus, out, metrics["forward"],
                                    perplexity, started)

    def pretrain_record(self, step, from_run, record, corpus, out, metrics, perplexity, started):
        """What a pretrain step records: where it read and wrote, its corpus' sizes (`metrics`), its perplexity."""
        return {
            "step": step,
            "from_run": None if from_run is None else self.where(from_run),
            **record,
            "data": {"corpus": [self.where(path) for path in corpus]},
            "out": self.where(out),
            "valid_perplexity": perplexity,
            "train_tokens": metrics["train_tokens"],
            "vocab_size": metrics["vocab_size"],
            "open_vocabulary": metrics.get("open_vocabulary"),
            "seconds": round(time.perf_counter() - started, 1),
        }

    def finetune(self, out, from_run, overrides, files):
        """`tftune finetune --from RUN --train ... --valid ... --test ... --set ... --out OUT`, with the run's
        recipe: `(scores, record)`. A bidirectional run gives an ensemble, whose scores hold its members'."""
        import keras

        from tftune.finetuning import finetune
        from tftune.inputs import labeled_data
        from tftune.pretrained_models import bidirectional_members

        members = bidirectional_members(from_run)
        loaded, record = self.load(from_run if members is None else members["forward"], overrides, reset=True)
        keras.backend.clear_session()
        started = time.perf_counter()
        data = labeled_data(files["train"], files["valid"], files["test"])
        metrics = finetune(loaded, from_run if members is None else list(members.values()), out, data, force=True)
        scores, training = self.scores(metrics), metrics
        if "members" in metrics:
            scores["members"] = {member["direction"]: self.scores(member) for member in metrics["members"]}
            # an ensemble's epochs are its members', by direction
            training = {key: {member["direction"]: member.get(key) for member in metrics["members"]}
                        for key in ("epochs", "weights_from_epoch")}
        return scores, {
            "step": "finetune",
            "from_run": self.where(from_run),
            **record,
            "data": {split: self.where(files[split]) for split in ("train", "valid", "test")},
            "out": self.where(out),
            "epochs": training["epochs"],
            "weights_from_epoch": training.get("weights_from_epoch"),
            "seconds": round(time.perf_counter() - started, 1),
        }

    @staticmethod
    def scores(metrics):
        """The figures a row keeps of a classifier's (or an ensemble member's) metrics."""
        return {"test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
                "valid_accuracy": metrics["valid"]["accuracy"]}


def smoke_corpus(path, tokens):
    """Writes the first lines of the shipped corpus, about `tokens` whitespace tokens: --smoke's LM corpus."""
    lines, count = [], 0
    for line in common.SHIPPED_CORPUS.read_text(encoding="utf-8").splitlines():
        if count >= tokens:
            break
        lines.append(line)
        count += len(line.split())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_lm(args, runner, root, store=None, direction="forward"):
    """`small_lm`'s own LM, `tftune pretrain --recipe RECIPE` with seed 0, shared by tasks and seeds: `(run, record)`.

    With --smoke, a tiny one (`SMOKE_LM_OVERRIDES`) on a slice of the shipped corpus. With a
    `store` (--resume-dir), the run is kept there and a finished one is used again. A backward
    one is --smoke's stand-in for the general LM's backward partner.
    """
    name = "small-lm" if direction == "forward" else f"small-lm-{direction}"
    run = (root if store is None else store.folder) / name
    record = None if store is None else store.record(name)
    if record is not None and not isinstance(open_pretrain_run(run), str):
        common.log(f"{NAME}: the small LM: already trained, {run}")
        return run, record
    overrides = ["pretrain.seed=0", *([] if direction == "forward" else [f"pretrain.direction={direction}"])]
    corpus = list(common.SHIPPED_PRETRAINING_CORPUS)
    if args.smoke:
        corpus = [smoke_corpus(root / "smoke-corpus.txt", SMOKE_LM_TOKENS)]
        overrides = [*SMOKE_LM_OVERRIDES, *overrides]
    common.log(f"{NAME}: the small LM ({direction}): recipe {args.recipe}")
    record = runner.pretrain(run, overrides, corpus, recipe=args.recipe)
    if store is not None:
        store.save_record(name, record)
    return run, record


def open_pretrain_run(name):
    """A whole pretrain run's directory (a preset's name or a run directory), or a string saying why there is none."""
    from tftune.errors import RunError
    from tftune.pretrained_models import resolve_run
    from tftune.runs import PretrainRun

    try:
        run = PretrainRun.open(resolve_run(name)).path
    except RunError as e:
        return str(e)
    return Path(run).resolve()


def _base(lm):
    """The shared run ("general", "small" or "baseline") that an LM run of `LM_STEPS`, or a shared run, comes from."""
    return LM_STEPS[lm][0] if lm in LM_STEPS else lm


def needed_base(row):
    """The shared run a row needs ("general", "small" or "baseline"), or None."""
    if row == "low_data":
        return "general"
    if row == "keras":
        return "baseline"
    return _base(TFTUNE_ROWS[row][0]) if row in TFTUNE_ROWS else None


def baseline_name(args):
    """Whose recipe the no-LM rows follow (--baselines-from), as the results name it."""
    if args.smoke:
        return f"{args.recipe} (--smoke)"
    return args.general if args.baselines_from == "general" else args.recipe


def shared_runs(args, runner, rows, root, store=None):
    """The runs every task shares: {"general": (run, []) or why it is missing, "small": (run, [its record]),
    "baseline": the general LM's entry or (the shipped recipe, [])}.

    Only those the rows need. With --smoke, the small LM stands in for the general LM and for
    the recipe. The baseline is the recipe the no-LM rows follow (`--baselines-from`).
    """
    needed = {needed_base(row) for row in rows}
    if "baseline" in needed and args.baselines_from == "general":
        needed.add("general")
    shared = {}
    if "small" in needed or (args.smoke and needed & {"general", "baseline"}):
        run, record = small_lm(args, runner, root, store)
        shared["small"] = (run, [record])
        if args.smoke and BIDIRECTIONAL in rows:
            from tftune.pretrained_models import name_partners

            name_partners(run, {"backward": small_lm(args, runner, root, store, direction="backward")[0].name})
    if "general" in needed:
        general = shared["small"][0] if args.smoke else open_pretrain_run(args.general)
        if isinstance(general, str):
            common.log(f"{NAME}: no general LM: {general}")
            shared["general"] = f"no general LM: {general}"
        else:
            runner.general, shared["general"] = general, (general, [])
    if "baseline" in needed:
        recipe = shared["small"] if args.smoke else (args.recipe, [])
        shared["baseline"] = shared["general"] if args.baselines_from == "general" else recipe
    return shared


def keras_spec(args, shared, runner):
    """The keras row's `accuracy_keras.choose`: --keras-cell and --keras-vectors, else the baseline recipe's."""
    recipe = None
    if args.keras_cell is None or args.keras_vectors is None:
        base = shared["baseline"]
        if isinstance(base, str):
            return f"{base}: give --keras-cell and --keras-vectors"
        recipe, _ = runner.load(base[0], [], reset=not isinstance(base[0], str))
    return accuracy_keras.choose(args.keras_cell, args.keras_vectors, recipe, baseline_name(args))


def lm_report(run, runner):
    """A shared LM as the result shows it: where, its encoder, corpus size and perplexity."""
    from tftune.runs import PretrainRun

    run_files = PretrainRun.open(run)
    metrics, encoder = run_files.metrics(), run_files.recipe.encoder
    return {"run": runner.where(run), "encoder": f"{encoder.layers} x {encoder.units} {encoder.cell}",
            "train_tokens": metrics["train_tokens"], "vocab_size": metrics["vocab_size"],
            "valid_perplexity": metrics["valid"]["perplexity"]}


class TaskRuns:
    """One task at one seed: its CSV files, and its LM runs, each made once, when a row first needs it.

    A step that an earlier row already took (the same run, overrides and data) is not taken
    again: its record is reused. That happens with --smoke only, where the small LM is also the
    general LM, so the small_lm row's steps are the tftune row's.
    """

    def __init__(self, runner, shared, task, folder, seed):
        self.runner, self.shared, self.task, self.folder, self.seed = runner, shared, task, folder, seed
        self.files = write_task(task, folder)
        self.lms = {}
        self.taken = {}  # {what a step does: (its out, its record) or (its scores, its record)}

    def lm(self, name):
        """`(run directory, the steps that made it)` of a shared run or of one of `LM_STEPS`."""
        if name in self.shared:
            return self.shared[name]
        if name not in self.lms:
            base, continues, own = LM_STEPS[name]
            run, steps = self.shared[base]
            step = ("pretrain", name == BIDIRECTIONAL, run, continues, tuple(own))
            if step not in self.taken:
                common.log(f"{NAME}: {self.task['name']}, seed {self.seed}: LM run {name}")
                corpus, overrides = [self.files["train"]], [*own, f"pretrain.seed={self.seed}"]
                out = self.folder / f"lm-{name}"
                from_run, recipe = (run, None) if continues else (None, run)
                if name == BIDIRECTIONAL:
                    record = self.runner.pretrain_bidirectional(out, overrides, corpus, from_run)
                else:
                    record = self.runner.pretrain(out, overrides, corpus, recipe=recipe, from_run=from_run)
                self.taken[step] = out, record
            out, record = self.taken[step]
            self.lms[name] = (out, [*steps, record] if continues else [record])
        return self.lms[name]

    def finetune(self, label, lm, own, train=None):
        """Fine-tunes from an LM run with its recipe: one seed's figures of a row, with every step."""
        run, steps = self.lm(lm)
        common.log(f"{NAME}: {self.task['name']}, seed {self.seed}: {label}")
        files = {**self.files, "train": train or self.files["train"]}
        step = ("finetune", run, tuple(own), files["train"])
        if step not in self.taken:
            self.taken[step] = self.runner.finetune(self.folder / f"finetune-{label}", run,
                                                    [*own, f"finetune.seed={self.seed}"], files)
        scores, record = self.taken[step]
        steps = [*steps, record]
        return {"seed": self.seed, **scores, "seconds": round(sum(step["seconds"] for step in steps), 1),
                "steps": steps}


# === The benchmark ===


def input_error(message):
    """Exits with one line on stderr and status 2, as for any bad input."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _parse_list(text, allowed, what):
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        input_error(f"unknown {what} {', '.join(unknown) or '(none)'}; expected {', '.join(allowed)}")
    return names


def _parse_seeds(args):
    given = args.seeds if args.seed is None else str(args.seed)
    texts = [text for text in given.split(",") if text]
    if not texts or not all(text.isdigit() for text in texts) or len(set(map(int, texts))) < len(texts):
        input_error(f"seeds are distinct non-negative integers, e.g. --seeds 0,1,2; got {given!r}")
    return [int(text) for text in texts]


def low_data_label(fraction, arm):
    return f"low_data_{round(fraction * 100)}pct_{arm}"


@dataclasses.dataclass
class Setup:
    """What the rows of every task share."""

    sizes: dict  # FULL or SMOKE
    runner: Runner
    shared: dict  # the shared runs (`shared_runs`)
    root: Path  # the runs and task files
    baseline: str  # whose recipe the no-LM rows follow (`baseline_name`)
    keras: dict | str | None = None  # the keras row's `keras_spec`, or why it cannot run; None without it
    vectors: object = None  # the keras row's loaded vectors
    store: ResultStore | None = None  # the finished results (--resume-dir)


def skip_reason(row, setup):
    """Why a row cannot run (no general LM), or would be the tftune row again (an ablation that changes nothing)."""
    shared, runner = setup.shared, setup.runner
    if row == "keras":
        return setup.keras if isinstance(setup.keras, str) else None
    base = needed_base(row)
    if base is not None and isinstance(shared[base], str):
        return "no general LM (see above)"
    if row == BIDIRECTIONAL:
        from tftune.bidirectional import partner_runs
        from tftune.errors import TftuneError

        try:
            partner_runs(shared["general"][0])
        except TftuneError as e:
            return str(e)
    if row in ABLATIONS:
        lm, own, _ = TFTUNE_ROWS[row]
        overrides = list(dict.fromkeys([*LM_STEPS[lm][2], *own]))
        ablated, _ = runner.load(shared["general"][0], overrides, reset=True)
        if ablated == runner.load(shared["general"][0], [], reset=True)[0]:
            return f"the tftune row's recipe already has {', '.join(overrides)} (with --set)"
    return None


def planned_rows(name, rows, reasons, setup):
    """{label: row} of a task before any run: its description, and an empty list of seeds or why it is skipped."""
    planned, sizes = {}, setup.sizes
    for row in rows:
        if row == "reference":
            accuracy = REFERENCE["accuracy"][name]
            planned[row] = {"description": REFERENCE["description"], "seeds": [], "published": True,
                            "mean": {"test_accuracy": accuracy, "valid_accuracy": None, "test_macro_f1": None,
                                     "seconds": None}, "std": None}
            continue
        if row == "keras":
            labels = {row: accuracy_keras.description(setup.keras, sizes["keras_units"])}
        elif row == BIDIRECTIONAL:
            labels = {row: TFTUNE_ROWS[row][2], **MEMBER_ROWS}
        elif row == "low_data":
            labels = {low_data_label(fraction, arm): f"{fraction:.0%} of the labels, from the {arm} row's LM run"
                      for fraction in sizes["low_data_fractions"] for arm in LOW_DATA_ARMS}
        else:
            labels = {row: TFTUNE_ROWS[row][2].format(baseline=setup.baseline)}
        for label, description in labels.items():
            planned[label] = {"description": description,
                              **({"skipped": reasons[row]} if reasons[row] else {"seeds": []})}
    return planned


def seed_figures(row, runs, setup):
    """{label: figures} of one row at the seed of `runs` (the low-data row gives one per share and arm)."""
    if row == "keras":
        common.log(f"{NAME}: {runs.task['name']}, seed {runs.seed}: plain Keras baseline")
        return {"keras": accuracy_keras.train_and_test(runs.task, setup.sizes, runs.seed, setup.vectors, setup.keras)}
    if row == BIDIRECTIONAL:
        return bidirectional_figures(runs.finetune(row, BIDIRECTIONAL, []))
    if row != "low_data":
        lm, own, _ = TFTUNE_ROWS[row]
        return {row: runs.finetune(row, lm, own)}
    from bench.serving import _write_rows

    figures = {}
    for fraction in setup.sizes["low_data_fractions"]:
        subset = stratified_subset(runs.task["train"], fraction, runs.seed)
        train = _write_rows(zip(*subset), runs.folder / f"train-{round(fraction * 100)}pct.csv")
        for arm in LOW_DATA_ARMS:
            label = low_data_label(fraction, arm)
            lm, own, _ = TFTUNE_ROWS[arm]
            figures[label] = {**runs.finetune(label, lm, own, train), "train_examples": len(subset[0])}
    return figures


def bidirectional_figures(figures):
    """The bidirectional row's figures, and each member's as a row of its own (with the ensemble's seconds)."""
    members = figures.pop("members")
    shared = {"seed": figures["seed"], "seconds": figures["seconds"]}
    return {BIDIRECTIONAL: figures,
            **{f"{BIDIRECTIONAL}_{direction}": {**shared, **members[direction]} for direction in DIRECTIONS}}


def stored_seed_figures(row, runs, setup):
    """`seed_figures`, read back when --resume-dir holds them already, else measured and saved at once."""
    store, name, seed = setup.store, runs.task["name"], runs.seed
    if store is None:
        return seed_figures(row, runs, setup)
    figures = store.load(name, row, seed)
    if figures is not None:
        common.log(f"{NAME}: {name}, seed {seed}: {row} already done, {store.path(name, row, seed)}")
        return figures
    figures = seed_figures(row, runs, setup)
    store.save(name, row, seed, figures)
    return figures


def spread(figures):
    """Means over the seeds (accuracies, macro-F1, seconds) and sample standard deviations (not of the seconds)."""
    keys = ("test_accuracy", "valid_accuracy", "test_macro_f1")
    mean = {key: round(statistics.fmean(seed[key] for seed in figures), 4) for key in (*keys, "seconds")}
    std = {key: round(statistics.stdev(seed[key] for seed in figures), 4) if len(figures) > 1 else None
           for key in keys}
    return {"mean": mean, "std": std}


def measure_task(name, by_seed, rows, setup):
    """A task's rows over the seeds (`by_seed`: {seed: the task loaded with it}), or why it is skipped."""
    first = next(iter(by_seed.values()))
    if isinstance(first, str):
        common.log(f"{NAME}: skipping {name}: {first}")
        return {"skipped": first}
    if name not in setup.sizes["ablation_tasks"]:
        rows = [row for row in rows if row in ("keras", "reference", "tftune")]
    if name != LOW_DATA_TASK:
        rows = [row for row in rows if row != "low_data"]
    reasons = {row: skip_reason(row, setup) for row in rows}
    result = {"source": first["source"], "classes": sorted(set(first["train"][1])),
              "examples": {split: len(first[split][0]) for split in ("train", "valid", "test")},
              "rows": planned_rows(name, rows, reasons, setup)}
    runnable = [row for row in rows if row != "reference" and not reasons[row]]
    for seed, task in by_seed.items():
        runs = TaskRuns(setup.runner, setup.shared, {**task, "name": name}, setup.root / name / f"seed-{seed}", seed)
        for row in runnable:
            for label, figures in stored_seed_figures(row, runs, setup).items():
                result["rows"][label]["seeds"].append(figures)
    for row in result["rows"].values():
        if row.get("seeds"):
            row.update(spread(row["seeds"]))
    return result


def open_store(args):
    """The --resume-dir store, its settings checked against the folder's; None without --resume-dir."""
    if args.resume_dir is None:
        return None
    settings = {"smoke": args.smoke, "general": args.general, "recipe": args.recipe, "overrides": args.overrides,
                "baselines_from": args.baselines_from, "keras_cell": args.keras_cell,
                "keras_vectors": args.keras_vectors}
    try:
        return ResultStore(args.resume_dir, settings)
    except ConfigMismatch as e:
        input_error(str(e))


def measure(args):
    from tftune.embeddings import load_vectors

    sizes = SMOKE if args.smoke else FULL
    tasks = _parse_list(args.tasks, TASKS, "task(s)")
    rows = _parse_list(args.rows, ROWS + EXTRA_ROWS, "row(s)")
    seeds = _parse_seeds(args)
    store = open_store(args)
    loaded = {name: {seed: load_task(name, seed, sizes) for seed in seeds} for name in tasks}
    if args.keep_runs is not None:
        args.keep_runs.mkdir(parents=True, exist_ok=True)
    root = Path(args.keep_runs or tempfile.mkdtemp(prefix="tftune-bench-accuracy-")).resolve()
    runner = Runner(root, args.overrides)
    setup = Setup(sizes, runner, {}, root, baseline_name(args), store=store)
    try:
        if not all(isinstance(by_seed[seeds[0]], str) for by_seed in loaded.values()):
            setup.shared = shared_runs(args, runner, rows, root, store)
        if "keras" in rows and "baseline" in setup.shared:
            setup.keras = keras_spec(args, setup.shared, runner)
            if not isinstance(setup.keras, str):
                setup.vectors = load_vectors(*accuracy_keras.VECTORS[setup.keras["vectors"]][:2])
        results = {name: measure_task(name, by_seed, rows, setup) for name, by_seed in loaded.items()}
        general = setup.shared.get("general")
        if general is not None:
            general = {"skipped": general} if isinstance(general, str) else lm_report(general[0], runner)
    finally:
        if args.keep_runs is None:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "config": {
            "general": "the small LM (--smoke)" if args.smoke else args.general,
            "recipe": args.recipe,
            "overrides": args.overrides,
            "seeds": seeds,
            "tasks": tasks,
            "rows": rows,
            "baselines_from": setup.baseline,
            "keras": setup.keras,
            "resume_dir": None if store is None else common.display_path(store.folder),
            "smoke_lm_overrides": SMOKE_LM_OVERRIDES if args.smoke else [],
        },
        "general": general,
        "small_lm": setup.shared["small"][1][0] if "small" in setup.shared else None,
        "tasks": results,
    }


# === Output ===


def _percent(value):
    return "n/a" if value is None else f"{value:.1%}"


def _task_summary(name, task):
    if "skipped" in task:
        return f"{name} skipped ({task['skipped']})"
    return f"{name}: " + ", ".join(f"{label} {_percent(row['mean']['test_accuracy'])}"
                                   for label, row in task["rows"].items() if "skipped" not in row)


def summary(result):
    config = result["config"]
    parts = [_task_summary(name, task) for name, task in result["tasks"].items()]
    return (f"{NAME} (mean test accuracy over seeds {','.join(map(str, config['seeds']))}, general LM "
            f"{config['general']}): " + "; ".join(parts))


def _intro(result):
    config, general, small = result["config"], result["general"], result["small_lm"]
    intro = f"Seeds {', '.join(map(str, config['seeds']))}"
    if config["overrides"]:
        intro += "; every tftune run with " + ", ".join(f"`{text}`" for text in config["overrides"])
    intro += "."
    if general is not None:
        intro += f" General LM `{config['general']}`: " + (
            f"missing ({general['skipped']})." if "skipped" in general else
            f"{general['encoder']}, {general['train_tokens']:,} training tokens, validation perplexity "
            f"{general['valid_perplexity']:.1f}.")
    if small is not None:
        intro += (f" Small LM (`small_lm`): {small['recipe']}, {small['train_tokens']:,} training tokens, validation "
                  f"perplexity {small['valid_perplexity']:.1f}, {small['seconds']:,.0f} s.")
    return intro + (" Accuracies: the mean over the seeds (± their standard deviation); seconds: the mean of the"
                    " row's own steps (LM steps and fine-tuning; the small LM's pretraining included).")


def _accuracy(row, key):
    value, std = row["mean"][key], (row["std"] or {}).get(key)
    return _percent(value) + ("" if std is None else f" ± {std:.1%}")


def markdown(result):
    lines = ["### Accuracy (`python -m bench.accuracy`)", "", _intro(result), "",
             "| task | row | test accuracy | valid accuracy | macro-F1 | seeds | seconds | what |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for name, task in result["tasks"].items():
        if "skipped" in task:
            lines.append(f"| {name} | skipped: {task['skipped']} | | | | | | |")
            continue
        for label, row in task["rows"].items():
            if "skipped" in row:
                lines.append(f"| {name} | {label} | skipped: {row['skipped']} | | | | | {row['description']} |")
                continue
            mean = row["mean"]
            f1 = "n/a" if mean["test_macro_f1"] is None else f"{mean['test_macro_f1']:.3f}"
            seconds = "—" if mean["seconds"] is None else f"{mean['seconds']:,.0f}"
            seeds = ", ".join(str(seed["seed"]) for seed in row["seeds"]) or "—"
            lines.append(f"| {name} | {label} | {_accuracy(row, 'test_accuracy')} | {_accuracy(row, 'valid_accuracy')}"
                         f" | {f1} | {seeds} | {seconds} | {row['description']} |")
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "Test accuracy: tftune's transfer learning, its parts, and frozen-vector baselines.",
                       measure, summary, add_arguments, argv=argv)


if __name__ == "__main__":
    main()
