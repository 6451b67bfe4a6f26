"""Accuracy: does LM pretraining + careful fine-tuning beat frozen-vector baselines?

Test accuracy and macro-F1 on two real tasks from `../shared/data` (skipped with a message when
absent): TREC-6 (5,452 training questions, 10% of them held out for validation with the seed;
500 test questions; the coarse label) and SST-2 (6,920 / 872 / 1,821 sentences). The task
splits are written as `text,label` CSV files in a temporary directory for tftune. Rows:

- **keras** (the plain baseline, run here): `TextVectorization` → frozen 50-d GloVe `Embedding`
  (the shipped `pretrained/glove.6B.50d.top20k.txt`, aligned to the vectorizer's vocabulary with
  `tftune.embeddings.align`) → `LSTM(256)` → `Dense(softmax)`, Adam, early stopping on the
  validation accuracy with the best weights restored.
- **reference** (published, not run): Kim (2014) CNN-static on frozen 300-d word2vec.
- **tftune** (the shipped recipe, `lstm-glove` unless `--recipe`): one general-domain LM
  pretraining run shared by all tasks, on a seeded mix of unlabeled English from
  `../shared/data` (WikiText-2 valid+test, PTB train, Gutenberg, Brown, review polarity v2,
  ABC) sized to `--pretrain-budget-seconds`; then per task target-domain LM fine-tuning on the
  task's training text (`pretrain(..., from_run=GENERAL)`), then `finetune`.
- **ablations** (finetune overrides on the same encoders): `scratch` (no LM pretraining:
  `pretrain.epochs=0` on the task's training text, i.e. its vocabulary and a random encoder),
  `gradual` (ULMFiT's gradual unfreezing, `finetune.unfreeze=gradual`), `constant_lr` (`finetune.lr_decay=1` and
  `finetune.schedule=constant`), `no_lm_finetune` (the general LM without target-domain LM
  fine-tuning).
- **low_data** (TREC-6 only): 10% and 25% of the training labels (stratified, seeded), the
  pretrained encoder of the `tftune` row vs the `scratch` one.

Every row records its test accuracy, macro-F1, validation accuracy, wall-clock seconds, seed
and the exact recipe and overrides (`$TMP` stands for the temporary directory). The shared
pretraining run reports its own tokens, perplexity and wall time.

Example:

```sh
python -m bench.accuracy --tasks trec6 --rows keras,tftune,scratch --pretrain-budget-seconds 600
python -m bench.accuracy --smoke
```
"""

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from bench import common

NAME = "accuracy"
TASKS = ("trec6", "sst2")
ROWS = ("keras", "reference", "tftune", "scratch", "gradual", "constant_lr", "no_lm_finetune", "low_data")
# Rows trained by tftune's finetune: (encoder, finetune overrides, what the row shows).
TFTUNE_ROWS = {
    "tftune": ("lm_finetuned", [], "shipped recipe: general LM + target-domain LM fine-tuning + fine-tuning"),
    "scratch": ("scratch", [], "no LM pretraining: random encoder, vocabulary of the task's training text"),
    "gradual": ("lm_finetuned", ["finetune.unfreeze=gradual"],
                "gradual unfreezing: the head alone, then one more layer per epoch (ULMFiT)"),
    "constant_lr": ("lm_finetuned", ["finetune.lr_decay=1", "finetune.schedule=constant"],
                    "one learning rate for all layers, no slanted triangular schedule"),
    "no_lm_finetune": ("general", [], "general LM only, no target-domain LM fine-tuning"),
}
# Rows whose encoder starts from the general LM (every tftune row but scratch, and the low-data curve).
NEED_GENERAL_LM = {row for row, (encoder, _, _) in TFTUNE_ROWS.items() if encoder != "scratch"} | {"low_data"}
ENCODERS = {"general": "general LM", "lm_finetuned": "general LM + target-domain LM fine-tuning",
            "scratch": "untrained (pretrain.epochs=0 on the task's text)"}
LOW_DATA_TASK = "trec6"
LOW_DATA_FRACTIONS = (0.1, 0.25)
REFERENCE = {
    "description": "Kim (2014) CNN-static, frozen word2vec 300d (published, not run)",
    "accuracy": {"trec6": 0.928, "sst2": 0.868},
}
# Test accuracy of the same plain Keras baseline measured elsewhere, for comparison.
KERAS_REFERENCE_ACCURACY = {"trec6": 0.882, "sst2": 0.732}
KERAS_UNITS = 256

# Unlabeled English for the general-domain LM, in this order (equal shares, as far as each goes).
PRETRAIN_SOURCES = {
    "wikitext-2": ("wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens"),
    "ptb": ("ptb/ptb.train.txt",),
    "gutenberg": ("gutenberg/gutenberg.txt",),
    "brown": ("brown/brown.txt",),
    "review_polarity_v2": ("review_polarity_v2/review_polarity.txt",),
    "abc": ("abc/abc.txt",),
}
# Tokens per second the general LM of the shipped recipe (2 x 128 LSTM, sampled softmax) trains at
# on 2 shared cores (13,600 measured); only used to size the corpus so that --pretrain-epochs fit
# the budget, which a callback enforces in any case.
ASSUMED_TOKENS_PER_SECOND = 12000
PRETRAIN_VALID_FRACTION = 0.02

FULL = {"train": None, "valid": None, "test": None, "pretrain_budget_seconds": 1200.0, "pretrain_epochs": 2,
        "keras_units": KERAS_UNITS, "keras_epochs": 30, "keras_patience": 3, "keras_batch_size": 32,
        "lm_finetune_epochs": None, "ablation_tasks": TASKS, "low_data_fractions": LOW_DATA_FRACTIONS,
        "overrides": []}
# --smoke runs every code path once: the ablations and one low-data point on TREC-6 only.
SMOKE = {"train": 240, "valid": 60, "test": 100, "pretrain_budget_seconds": 3.0, "pretrain_epochs": 1,
         "pretrain_tokens": 20000, "lm_finetune_epochs": 1, "keras_units": 16, "keras_epochs": 1, "keras_patience": 1,
         "keras_batch_size": 32, "ablation_tasks": ("trec6",), "low_data_fractions": LOW_DATA_FRACTIONS[1:],
         "overrides": ["encoder.units=16", "encoder.layers=1", "vocab.max_size=3000", "pretrain.seq_len=20",
                       "pretrain.batch_size=16", "finetune.max_len=60", "finetune.batch_size=16",
                       "finetune.epochs=1"]}


def add_arguments(parser):
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks [default: {','.join(TASKS)}]")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows [default: {','.join(ROWS)}]")
    parser.add_argument("--recipe", default="lstm-glove", help="tftune recipe of every tftune run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="tftune recipe override applied last to every tftune run (repeatable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the splits, the Keras baseline and every tftune run [default: 0]")
    parser.add_argument("--pretrain-budget-seconds", type=float, default=None,
                        help="wall-clock limit of the general LM pretraining [default: 1200; 3 with --smoke]")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="epochs of the general LM pretraining; the corpus is sized so that they fit the "
                             "budget [default: 2; 1 with --smoke]")
    parser.add_argument("--pretrain-tokens", type=int, default=None,
                        help="size of the pretraining corpus in whitespace tokens [default: from the budget]")
    parser.add_argument("--lm-finetune-epochs", type=int, default=None,
                        help="epochs of target-domain LM fine-tuning [default: the recipe's pretrain.epochs]")
    parser.add_argument("--pretrain-run", type=Path, default=None,
                        help="reuse this general pretrain run instead of pretraining")
    parser.add_argument("--keep-runs", type=Path, default=None,
                        help="write the tftune runs and task files here instead of a temporary directory")


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


# === The general-domain pretraining corpus ===


def _read_documents(paths):
    lines = []
    for path in paths:
        lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def build_corpus(path, target_tokens, seed):
    """Writes a seeded, shuffled mix of `PRETRAIN_SOURCES` of about `target_tokens` whitespace tokens.

    Every source gets an equal share of the target (what a small source cannot fill goes to the
    others); a share is a seeded sample of the source's lines (paragraphs). Returns what went in.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    sources = {}
    for name, files in PRETRAIN_SOURCES.items():
        paths = [common.SHARED_DATA / file for file in files]
        if all(p.is_file() for p in paths):
            documents = _read_documents(paths)
            sources[name] = (documents, np.array([len(doc.split()) for doc in documents]))
    if not sources:
        return None
    shares, left = {}, target_tokens
    for i, (name, (_, lengths)) in enumerate(sorted(sources.items(), key=lambda item: item[1][1].sum())):
        shares[name] = min(int(lengths.sum()), left // (len(sources) - i))
        left -= shares[name]
    picked, report = [], {}
    for name, (documents, lengths) in sources.items():
        order = rng.permutation(len(documents))
        n = int(np.searchsorted(np.cumsum(lengths[order]), shares[name])) + 1
        chosen = order[:n]
        picked += [documents[i] for i in chosen]
        report[name] = {"documents": len(chosen), "tokens": int(lengths[chosen].sum())}
    picked = [picked[i] for i in rng.permutation(len(picked))]
    path.write_text("\n".join(picked) + "\n", encoding="utf-8")
    return {
        "sources": report,
        "documents": len(picked),
        "tokens": sum(source["tokens"] for source in report.values()),
        "files": {name: [common.display_path(common.SHARED_DATA / file) for file in PRETRAIN_SOURCES[name]]
                  for name in report},
    }


# === tftune runs ===


class Runner:
    """Runs tftune pretrain/finetune with the recipe, the seed and `--set`, and records the overrides.

    The recipe file is read once, at the start: every run derives its recipe from that copy
    (`Recipe.with_overrides`), so all the runs of one benchmark share the same recipe.
    """

    def __init__(self, args, sizes, root):
        from tftune.recipe import load_recipe

        self.recipe, self.seed = args.recipe, args.seed
        self.root = Path(root)
        self.last = [f"pretrain.seed={args.seed}", f"finetune.seed={args.seed}", *sizes["overrides"], *args.overrides]
        self.base = load_recipe(args.recipe, self.last)

    def overrides(self, overrides):
        return [*overrides, *self.last]

    def shown(self, overrides):
        """The overrides as recorded: `$TMP` for the run directory root."""
        return [text.replace(str(self.root), "$TMP") for text in self.overrides(overrides)]

    def load(self, overrides):
        return self.base.with_overrides(self.overrides(overrides))

    def pretrain(self, out, overrides, callbacks=(), **options):
        import keras

        from tftune.train import pretrain

        keras.backend.clear_session()
        started = time.perf_counter()
        metrics = pretrain(self.load(overrides), out, force=True, callbacks=callbacks, **options)
        return metrics, round(time.perf_counter() - started, 1)

    def finetune(self, out, encoder, overrides):
        import keras

        from tftune.train import finetune

        keras.backend.clear_session()
        started = time.perf_counter()
        metrics = finetune(self.load(overrides), encoder, out, force=True)
        seconds = round(time.perf_counter() - started, 1)
        return {
            "test_accuracy": metrics["test"]["accuracy"],
            "test_macro_f1": metrics["test"]["macro_f1"],
            "valid_accuracy": metrics["valid"]["accuracy"],
            "epochs": metrics["epochs"],
            "weights_from_epoch": metrics.get("weights_from_epoch"),
            "seconds": seconds,
            "recipe": self.recipe,
            "overrides": self.shown(overrides),
        }


def _lm_summary(metrics, seconds):
    return {
        "valid_perplexity": metrics["valid"]["perplexity"],
        "train_tokens": metrics["train_tokens"],
        "valid_tokens": metrics["valid_tokens"],
        "vocab_size": metrics["vocab_size"],
        "train_tokens_per_second": metrics.get("train_tokens_per_second"),
        "token_coverage_by_vectors": (metrics.get("coverage") or {}).get("token_share"),
        "seconds": seconds,
    }


def general_pretraining(runner, args, sizes, root):
    """The shared general-domain LM run: `(run directory, report)`, or `(None, reason)`."""
    from bench.callbacks import WallClockBudget

    if args.pretrain_run is not None:
        metrics = json.loads((args.pretrain_run / "metrics.json").read_text(encoding="utf-8"))
        return args.pretrain_run, {"reused_run": str(args.pretrain_run),
                                   **_lm_summary(metrics, metrics.get("wall_seconds"))}
    budget_seconds = args.pretrain_budget_seconds or sizes["pretrain_budget_seconds"]
    epochs = args.pretrain_epochs or sizes["pretrain_epochs"]
    target = args.pretrain_tokens or sizes.get("pretrain_tokens") or int(
        budget_seconds * ASSUMED_TOKENS_PER_SECOND / epochs)
    corpus_path = root / "pretrain-corpus.txt"
    corpus = build_corpus(corpus_path, target, args.seed)
    if corpus is None:
        return None, f"no pretraining text under {common.display_path(common.SHARED_DATA)}"
    common.log(f"{NAME}: general LM pretraining on {corpus['tokens']:,} tokens, "
               f"{epochs} epoch(s) within {budget_seconds:g} s")
    overrides = [f"pretrain.corpus={json.dumps(str(corpus_path))}", f"pretrain.epochs={epochs}",
                 f"pretrain.valid_fraction={PRETRAIN_VALID_FRACTION}"]
    budget = WallClockBudget(budget_seconds)
    run = root / "pretrain-general"
    metrics, seconds = runner.pretrain(run, overrides, callbacks=[budget])
    recipe = runner.load(overrides)["pretrain"]
    steps_per_epoch = math.ceil((metrics["train_tokens"] - 1) // recipe["seq_len"] / recipe["batch_size"])
    return run, {
        "corpus": {**corpus, "target_tokens": target},
        **_lm_summary(metrics, seconds),
        "budget_seconds": budget_seconds,
        "epochs_asked": epochs,
        "steps": budget.steps,
        "epochs": round(budget.steps / steps_per_epoch, 2),
        "stopped_by_budget": budget.steps < steps_per_epoch * epochs,
        "recipe": runner.recipe,
        "overrides": runner.shown(overrides),
    }


def task_encoders(runner, lm_finetune_epochs, files, general, needed, folder):
    """The task's own encoder runs: {"lm_finetuned" and/or "scratch": (run directory, report)}.

    `lm_finetuned` continues the general LM on the task's training text; `scratch` is
    `pretrain.epochs=0` on that text: its vocabulary and an untrained encoder.
    """
    encoders = {}
    corpus = f"pretrain.corpus={json.dumps(str(files['train']))}"
    if "lm_finetuned" in needed and general is not None:
        overrides = [corpus, f"pretrain.epochs={lm_finetune_epochs}"]
        run = folder / "pretrain-lm-finetuned"
        common.log(f"{NAME}: target-domain LM fine-tuning on {common.display_path(files['train'])}")
        metrics, seconds = runner.pretrain(run, overrides, from_run=general)
        encoders["lm_finetuned"] = (run, {**_lm_summary(metrics, seconds), "recipe": runner.recipe,
                                          "overrides": runner.shown(overrides)})
    if "scratch" in needed:
        run, overrides = folder / "pretrain-scratch", [corpus, "pretrain.epochs=0"]
        common.log(f"{NAME}: untrained encoder with the vocabulary of {common.display_path(files['train'])}")
        metrics, seconds = runner.pretrain(run, overrides)
        encoders["scratch"] = (run, {"vocab_size": metrics["vocab_size"], "seconds": seconds,
                                     "recipe": runner.recipe, "overrides": runner.shown(overrides)})
    return encoders


def vocabulary_coverage(run, task):
    """Share of the task's tokens (train, test) that a run's vocabulary knows (not `<unk>`)."""
    import numpy as np

    from tftune.text import UNK_ID, Tokenizer, Vocabulary

    info = json.loads((Path(run) / "run.json").read_text(encoding="utf-8"))
    vocab, tokenizer = Vocabulary.load(Path(run) / "vocab.txt"), Tokenizer.from_config(info["tokenizer"])
    coverage = {}
    for split in ("train", "test"):
        ids = np.concatenate(vocab.encode(task[split][0], tokenizer, append_eos=False))
        coverage[split] = round(float(np.mean(ids != UNK_ID)), 4)
    return coverage


# === The plain Keras baseline ===


def keras_baseline(task, sizes, seed, vectors):
    """TextVectorization → frozen GloVe → LSTM → softmax, early stopping on validation accuracy."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tftune.embeddings import align
    from tftune.metrics import classification_metrics
    from tftune.text import Vocabulary

    keras.backend.clear_session()
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy("float32")
    labels = sorted(set(task["train"][1]))
    label_index = {label: i for i, label in enumerate(labels)}
    vectorizer = keras.layers.TextVectorization(max_tokens=20000)
    vectorizer.adapt(task["train"][0])
    words = vectorizer.get_vocabulary()  # "" (padding), "[UNK]", then the words
    # tftune's Vocabulary puts <pad>, <unk>, <eos> first; drop the <eos> row to match the vectorizer.
    matrix, coverage = align(Vocabulary(words[2:]), vectors, seed=seed)
    matrix = np.delete(matrix, 2, axis=0)
    assert len(matrix) == len(words)

    def dataset(split, shuffle=False):
        texts, split_labels = task[split]
        data = tf.data.Dataset.from_tensor_slices((texts, [label_index[label] for label in split_labels]))
        if shuffle:
            data = data.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
        # Each batch is padded to its longest text; the Embedding masks the padding.
        return data.batch(sizes["keras_batch_size"]).map(lambda x, y: (vectorizer(x), y)).prefetch(tf.data.AUTOTUNE)

    model = keras.Sequential([
        keras.Input(shape=(None,), dtype="int64"),
        keras.layers.Embedding(len(words), matrix.shape[1], embeddings_initializer=keras.initializers.Constant(matrix),
                               trainable=False, mask_zero=True),
        keras.layers.LSTM(sizes["keras_units"]),
        keras.layers.Dense(len(labels), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=sizes["keras_patience"],
                                         restore_best_weights=True)
    valid = dataset("valid")
    history = model.fit(dataset("train", shuffle=True), validation_data=valid, epochs=sizes["keras_epochs"],
                        callbacks=[stop], verbose=2)
    test = dataset("test")
    predicted = np.argmax(model.predict(test, verbose=0), axis=-1)
    test_metrics = classification_metrics([label_index[label] for label in task["test"][1]], predicted, labels)
    return {
        "test_accuracy": test_metrics["accuracy"],
        "test_macro_f1": test_metrics["macro_f1"],
        "valid_accuracy": max(history.history["val_accuracy"]),
        "epochs": len(history.history["loss"]),
        "best_epoch": int(np.argmax(history.history["val_accuracy"])) + 1,
        "seconds": round(time.perf_counter() - started, 1),
        "seed": seed,
        "vocab_size": len(words),
        "vector_type_coverage": round(coverage.type_share, 4),
        "settings": {"vectors": common.display_path(common.SHIPPED_GLOVE), "max_tokens": 20000,
                     "units": sizes["keras_units"], "batch_size": sizes["keras_batch_size"], "optimizer": "adam 0.001",
                     "max_epochs": sizes["keras_epochs"], "early_stopping": f"val_accuracy, patience "
                     f"{sizes['keras_patience']}, best weights restored"},
        "reference_accuracy": KERAS_REFERENCE_ACCURACY[task["name"]],
    }


# === The benchmark ===


def _parse_list(text, allowed, what):
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise SystemExit(f"error: unknown {what} {', '.join(unknown) or '(none)'}; expected {', '.join(allowed)}")
    return names


def measure_task(name, task, runner, lm_finetune_epochs, sizes, general, rows, root, vectors):
    if isinstance(task, str):
        common.log(f"{NAME}: skipping {name}: {task}")
        return {"skipped": task}
    task["name"] = name
    if name not in sizes["ablation_tasks"]:
        rows = [row for row in rows if row not in TFTUNE_ROWS or row == "tftune"]
    folder = root / name
    files = write_task(task, folder)
    labels = sorted(set(task["train"][1]))
    result = {"source": task.pop("source"), "classes": labels,
              "examples": {split: len(task[split][0]) for split in ("train", "valid", "test")}, "rows": {}}
    data = [f"finetune.train={json.dumps(str(files['train']))}", f"finetune.valid={json.dumps(str(files['valid']))}",
            f"finetune.test={json.dumps(str(files['test']))}"]
    low_data = "low_data" in rows and name == LOW_DATA_TASK and general is not None
    needed = {TFTUNE_ROWS[row][0] for row in rows if row in TFTUNE_ROWS} | ({"lm_finetuned", "scratch"} if low_data
                                                                                else set())
    encoders = task_encoders(runner, lm_finetune_epochs, files, general, needed, folder)
    runs = {"general": general, **{kind: run for kind, (run, _) in encoders.items()}}
    result["encoders"] = {kind: report for kind, (_, report) in encoders.items()}
    # The words an encoder's vocabulary knows are the words fine-tuning can see (LM fine-tuning
    # keeps the general vocabulary).
    result["vocabulary_coverage"] = {kind: vocabulary_coverage(run, task) for kind, run in runs.items()
                                     if run is not None and kind != "lm_finetuned"}
    for row in rows:
        if row == "keras":
            common.log(f"{NAME}: {name} / plain Keras baseline")
            result["rows"]["keras"] = {"description": "plain Keras: TextVectorization, frozen GloVe 50d, "
                                                      f"LSTM({sizes['keras_units']}), softmax",
                                       **keras_baseline(task, sizes, runner.seed, vectors)}
        elif row == "reference":
            result["rows"]["reference"] = {"description": REFERENCE["description"],
                                           "test_accuracy": REFERENCE["accuracy"][name], "test_macro_f1": None,
                                           "seconds": None, "seed": None}
        elif row in TFTUNE_ROWS:
            kind, overrides, description = TFTUNE_ROWS[row]
            if runs.get(kind) is None:
                result["rows"][row] = {"description": description, "skipped": "no general pretrain run"}
                continue
            common.log(f"{NAME}: {name} / {row}")
            result["rows"][row] = {"description": description, "encoder": ENCODERS[kind],
                                   "seed": runner.seed,
                                   **runner.finetune(folder / f"finetune-{row}", runs[kind], data + overrides)}
    if low_data:
        result["low_data"] = low_data_curve(task, runner, runs, data, folder, runner.seed,
                                            sizes["low_data_fractions"])
    return result


def low_data_curve(task, runner, runs, data, folder, seed, fractions):
    """TREC-6 with a share of the training labels: the tftune row's encoder vs the scratch one."""
    from bench.serving import _write_rows

    points = []
    for fraction in fractions:
        subset = stratified_subset(task["train"], fraction, seed)
        train = _write_rows(zip(*subset), folder / f"train-{round(fraction * 100)}pct.csv")
        point = {"fraction": fraction, "train_examples": len(subset[0])}
        for arm, kind in (("pretrained", "lm_finetuned"), ("scratch", "scratch")):
            common.log(f"{NAME}: {task['name']} / {fraction:.0%} of the labels / {arm}")
            overrides = [f"finetune.train={json.dumps(str(train))}", *data[1:]]
            point[arm] = {"seed": seed, "encoder": ENCODERS[kind],
                          **runner.finetune(folder / f"finetune-{round(fraction * 100)}pct-{arm}", runs[kind],
                                            overrides)}
        points.append(point)
    return points


def measure(args):
    from tftune.embeddings import load_vectors

    sizes = SMOKE if args.smoke else FULL
    tasks = _parse_list(args.tasks, TASKS, "task(s)")
    rows = _parse_list(args.rows, ROWS, "row(s)")
    if args.keep_runs is not None:
        args.keep_runs.mkdir(parents=True, exist_ok=True)
    root = Path(args.keep_runs or tempfile.mkdtemp(prefix="tftune-bench-accuracy-")).resolve()
    runner = Runner(args, sizes, root)
    lm_finetune_epochs = args.lm_finetune_epochs or sizes["lm_finetune_epochs"] or runner.base["pretrain"]["epochs"]
    loaded = {name: load_task(name, args.seed, sizes) for name in tasks}
    try:
        general, pretraining = None, None
        if set(rows) & NEED_GENERAL_LM and not all(isinstance(task, str) for task in loaded.values()):
            general, pretraining = general_pretraining(runner, args, sizes, root)
            if general is None:
                common.log(f"{NAME}: no general pretraining: {pretraining}")
                pretraining = {"skipped": pretraining}
        vectors = load_vectors(common.SHIPPED_GLOVE, "glove") if "keras" in rows else None
        results = {name: measure_task(name, task, runner, lm_finetune_epochs, sizes, general, rows, root, vectors)
                   for name, task in loaded.items()}
    finally:
        if args.keep_runs is None:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "config": {
            "recipe": args.recipe,
            "overrides": args.overrides,
            "seed": args.seed,
            "tasks": tasks,
            "rows": rows,
            "lm_finetune_epochs": lm_finetune_epochs,
            "smoke_overrides": sizes["overrides"],
            # The recipe as every run started from it (the file, the seeds, --smoke sizes and --set).
            "recipe_settings": runner.base.to_dict(),
        },
        "pretraining": pretraining,
        "tasks": results,
    }


# === Output ===


def _percent(value):
    return "n/a" if value is None else f"{value:.1%}"


def _rows_in_order(task):
    """(label, row) pairs of a task: the rows, then the low-data points."""
    pairs = [(name, row) for name, row in task["rows"].items()]
    for point in task.get("low_data", []):
        for arm in ("pretrained", "scratch"):
            pairs.append((f"{point['fraction']:.0%} of the labels ({point['train_examples']:,}), {arm}", point[arm]))
    return pairs


def _task_summary(name, task):
    if "skipped" in task:
        return f"{name} skipped ({task['skipped']})"
    return f"{name}: " + ", ".join(f"{label} {_percent(row['test_accuracy'])}" for label, row in _rows_in_order(task)
                                   if "skipped" not in row)


def summary(result):
    parts = [_task_summary(name, task) for name, task in result["tasks"].items()]
    pretraining = result["pretraining"]
    lm = ""
    if pretraining and "skipped" not in pretraining:
        lm = f", general LM perplexity {pretraining['valid_perplexity']:.1f}"
    return f"{NAME} (test accuracy, recipe {result['config']['recipe']}{lm}): " + "; ".join(parts)


def _setup(row, config):
    """What a row ran: the encoder and the overrides of its own (not the data, seeds, --set or --smoke ones)."""
    if "encoder" not in row:
        return row["description"]
    own = [text for text in row["overrides"] if not text.startswith(("finetune.train=", "finetune.valid=",
           "finetune.test=", "pretrain.seed=", "finetune.seed=")) and text not in config["smoke_overrides"]
           and text not in config["overrides"]]
    return row["encoder"] + "".join(f" `{text}`" for text in own)


def _task_notes(name, task):
    """One line per task: its examples, its LM fine-tuning and how much of its test text the vocabularies know."""
    examples = task["examples"]
    note = f"{name}: {examples['train']:,} / {examples['valid']:,} / {examples['test']:,} train / valid / test examples"
    lm = task["encoders"].get("lm_finetuned")
    if lm:
        note += f"; target-domain LM fine-tuning: perplexity {lm['valid_perplexity']:.1f}, {lm['seconds']:,.0f} s"
    coverage = task.get("vocabulary_coverage", {})
    if coverage:
        note += "; test tokens in the vocabulary: " + ", ".join(
            f"{ENCODERS[kind].split(' (')[0]} {shares['test']:.1%}" for kind, shares in coverage.items())
    if "keras" in task["rows"]:
        note += f"; the Keras baseline measured elsewhere: {task['rows']['keras']['reference_accuracy']:.1%}"
    return note + "."


def markdown(result):
    config, pretraining = result["config"], result["pretraining"]
    intro = f"Recipe `{config['recipe']}`"
    if config["overrides"]:
        intro += " with " + ", ".join(f"`{text}`" for text in config["overrides"])
    intro += f", seed {config['seed']}."
    if pretraining and "skipped" not in pretraining:
        corpus = pretraining.get("corpus")
        if corpus:
            intro += (f" General LM (shared by the tasks): {corpus['tokens']:,} tokens of "
                      f"{', '.join(corpus['sources'])}, {pretraining['epochs']:g} epoch(s) in "
                      f"{pretraining['seconds']:,.0f} s")
        else:
            intro += f" General LM: the run {pretraining['reused_run']}"
        intro += f", validation perplexity {pretraining['valid_perplexity']:.1f}."
    intro += (" Seconds: each row's own run (for tftune rows the fine-tuning; the LM runs are given apart)."
              " Low-data rows fine-tune the encoders of the tftune and scratch rows (LM fine-tuning saw all the"
              " training text) on a stratified share of the labels.")
    lines = ["### Accuracy (`python -m bench.accuracy`)", "", intro, "",
             "| task | row | test accuracy | macro-F1 | seconds | setup |", "| --- | --- | ---: | ---: | ---: | --- |"]
    notes = []
    for name, task in result["tasks"].items():
        if "skipped" in task:
            lines.append(f"| {name} | skipped: {task['skipped']} | | | | |")
            continue
        notes.append(_task_notes(name, task))
        for label, row in _rows_in_order(task):
            if "skipped" in row:
                lines.append(f"| {name} | {label} | skipped: {row['skipped']} | | | |")
                continue
            f1 = "n/a" if row["test_macro_f1"] is None else f"{row['test_macro_f1']:.3f}"
            seconds = "—" if row["seconds"] is None else f"{row['seconds']:,.0f}"
            lines.append(f"| {name} | {label} | {_percent(row['test_accuracy'])} | {f1} | {seconds} | "
                         f"{_setup(row, config)} |")
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    return common.main(NAME, "Test accuracy: tftune's transfer learning vs frozen-vector baselines.", measure,
                       summary, add_arguments, argv=argv)


if __name__ == "__main__":
    main()
