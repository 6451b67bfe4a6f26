"""Language-model pretraining: tftune's `pretrain` against a plain Keras LM on the same data.

For each cell (LSTM, GRU, SimpleRNN) two fresh processes train for the same wall-clock budget:

- **tftune**: `tftune.pretraining.pretrain` with a recipe (default `lstm-glove`) and overrides that fix
  the shared configuration; tokens/s is `train_tokens_per_second` from its returned metrics
  (and tokens per CPU second, all threads of the process, `train_tokens_per_cpu_second`).
- **Keras**: a plain model built here, `Embedding(V, dim)` (frozen, the same aligned vectors) →
  2 × `LSTM/GRU/SimpleRNN(units, return_sequences=True)` → `Dense(V, softmax)`, trained with
  `model.fit` on the same windows of the same corpus ids, with Adam at the recipe's learning rate.

Shared configuration: sequence length 70, batch 64, 256 units, 2 layers, a vocabulary of at
most 20,000 words built by tftune's tokenizer from the training split, the shipped 50-d GloVe
vectors (the baseline of the original report used 100-d vectors; only 50-d ones ship here), no
dropout (tftune's recipes use 0.2; `--set encoder.dropout=0.2` restores it) and float32. Data:
PTB train + WikiText-2 valid/test + Brown from `../shared/data/` beside the checkout when
present (2.6M tokens, a vocabulary of 20,000 as in the report), PTB valid held out; else the
shipped WikiText-2 paragraphs with 5% held out.

Both stop at `--budget-seconds` through a Keras callback (validation at the end of an epoch
inside the budget counts against it); the validation perplexity is then measured with the full
softmax over the same held-out windows. Each process reports its peak RSS. Ratios are
tftune / Keras: above 1 is faster for tokens/s, below 1 is better for perplexity.

Example:

```sh
python -m bench.lm_throughput --budget-seconds 120 --cells lstm
```
"""

import json
import math
import tempfile
from pathlib import Path

from bench import common, pytorch

NAME = "lm_throughput"
CELLS = ("lstm", "gru", "simple_rnn")
# Each cell trains with the settings of its shipped recipe (the SimpleRNN one has a lower learning rate).
CELL_RECIPES = {"lstm": "lstm-glove", "gru": "gru-glove", "simple_rnn": "rnn-glove"}
FULL = {"seq_len": 70, "batch_size": 64, "units": 256, "layers": 2, "vocab_max_size": 20000}
SMOKE = {"seq_len": 20, "batch_size": 16, "units": 16, "layers": 1, "vocab_max_size": 2000}
SMOKE_CORPUS_LINES = 300
SMOKE_BUDGET_SECONDS = 1.0
SMOKE_MATMUL = {"size": 256, "repeats": 3}  # the peak's code path, not its figure
# Large enough that the wall-clock budget, not the epoch count, ends training.
MANY_EPOCHS = 100_000
# Training text, relative to ../shared/data.
TRAIN_FILES = ("ptb/ptb.train.txt", "wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens", "brown/brown.txt")


def add_arguments(parser):
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="training time of every model [default: 300; 1 with --smoke]")
    parser.add_argument("--cells", default=None,
                        help="comma-separated cells [default: lstm,gru,simple_rnn; lstm with --smoke]")
    parser.add_argument(
        "--recipe",
        default=None,
        help="tftune recipe the tftune side starts from, for every cell [default: each cell's shipped recipe: "
        + ", ".join(f"{cell} {name}" for cell, name in CELL_RECIPES.items())
        + "]",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra tftune recipe override, applied last (repeatable)")


# === Data ===


def _count_documents(path):
    from tftune.data import read_corpus

    return len(read_corpus([path]))


def choose_corpus(smoke, tmp):
    """(label, corpus files, valid_fraction) such that tftune's split holds out the right documents.

    With `../shared/data` beside the checkout: PTB train, WikiText-2 valid and test and the Brown
    corpus for training (2.6M tokens, enough words for the report's 20,000-word vocabulary at
    `min_freq` 2; PTB alone has 10,000) and PTB valid held out.
    """
    shared = common.SHARED_DATA
    if smoke:
        lines = common.SHIPPED_CORPUS.read_text(encoding="utf-8").splitlines()[:SMOKE_CORPUS_LINES]
        path = Path(tmp) / "corpus.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return "wikitext-2-valid (first 300 paragraphs)", [path], 0.05
    train = [shared / path for path in TRAIN_FILES]
    valid = shared / "ptb" / "ptb.valid.txt"
    if all(path.is_file() for path in (*train, valid)):
        files = []
        for path in train:
            # tftune reads corpora from .txt files; WikiText ships as .tokens.
            if path.suffix != ".txt":
                copy = Path(tmp) / f"{path.stem}.txt"
                copy.write_bytes(path.read_bytes())
                path = copy
            files.append(path)
        files.append(valid)
        counts = [_count_documents(path) for path in files]
        # tftune holds out the last round(n * valid_fraction) documents: exactly ptb.valid.txt.
        return "ptb + wikitext-2 valid/test + brown (ptb valid held out)", files, counts[-1] / sum(counts)
    return "wikitext-2-valid (shipped; 5% held out)", [common.SHIPPED_CORPUS], 0.05


# === Workers ===


def _work_tftune(spec):
    from tftune.inputs import corpus_data
    from tftune.recipe import load_recipe
    from tftune.runs import PretrainRun
    from tftune.pretraining import pretrain

    from bench.callbacks import WallClockBudget

    recipe = load_recipe(spec["recipe"], spec["recipe_overrides"])
    budget = WallClockBudget(spec["budget_seconds"])
    corpus = corpus_data([Path(path) for path in spec["corpus"]])
    metrics = pretrain(recipe, spec["run_dir"], corpus, callbacks=[budget])
    settings = recipe.pretrain
    windows = (metrics["train_tokens"] - 1) // settings.seq_len
    return {
        "tokens_per_second": metrics["train_tokens_per_second"],
        "tokens_per_cpu_second": metrics["train_tokens_per_cpu_second"],
        "valid_perplexity": metrics["valid"]["perplexity"],
        "lm_output": metrics.get("output", "full"),
        "steps": budget.steps,
        "epochs": round(budget.steps / math.ceil(windows / settings.batch_size), 2),
        "train_seconds": round(budget.elapsed, 1),
        "vocab_size": metrics["vocab_size"],
        "train_tokens": metrics["train_tokens"],
        "valid_tokens": metrics["valid_tokens"],
        "vocab_fingerprint": PretrainRun.open(spec["run_dir"]).vocab.fingerprint(),
    }


def _prepared_data(spec):
    """The same documents, split, vocabulary, ids, vectors and windows as tftune's pretrain builds."""
    import numpy as np

    from tftune.cache import split_documents
    from tftune.batches import lm_windows
    from tftune.data import read_corpus
    from tftune.embeddings import align, load_vectors
    from tftune.text import Tokenizer, Vocabulary

    s = spec["settings"]
    train_docs, valid_docs = split_documents(read_corpus(spec["corpus"]), spec["valid_fraction"])
    vectors = load_vectors(spec["vectors"], spec["vectors_format"])
    tokenizer = Tokenizer(lowercase=s["lowercase"])
    vocab = Vocabulary.build([tokenizer.tokenize(doc) for doc in train_docs], s["vocab_max_size"], s["min_freq"])
    matrix, _ = align(vocab, vectors, oov=s["oov"], seed=s["seed"])
    train_ids = np.concatenate(vocab.encode(train_docs, tokenizer)).astype("int32")
    valid_ids = np.concatenate(vocab.encode(valid_docs, tokenizer)).astype("int32")
    x, y = lm_windows(train_ids, s["seq_len"])
    valid_x, valid_y = lm_windows(valid_ids, s["seq_len"])
    return {"vocab": vocab, "matrix": matrix, "x": x, "y": y, "valid_x": valid_x, "valid_y": valid_y,
            "train_tokens": int(len(train_ids)), "valid_tokens": int(len(valid_ids))}


def _data_facts(data):
    """What every side reports about its data, to show they trained on the same."""
    return {"vocab_size": len(data["vocab"]), "train_tokens": data["train_tokens"],
            "valid_tokens": data["valid_tokens"], "vocab_fingerprint": data["vocab"].fingerprint()}


def _work_pytorch(spec):
    from bench import pytorch

    pytorch.load(spec["pytorch_threads"])  # before tftune's data preparation imports TensorFlow
    data = _prepared_data(spec)
    result = pytorch.train_language_model(spec["cell"], data, spec["settings"], spec["budget_seconds"],
                                          spec["pytorch_threads"])
    return {**result, **_data_facts(data)}


def _work_keras(spec):
    import keras

    from bench.callbacks import WallClockBudget
    from tftune.callbacks import Throughput

    s = spec["settings"]
    keras.utils.set_random_seed(s["seed"])
    keras.mixed_precision.set_global_policy("float32")
    data = _prepared_data(spec)
    vocab, matrix = data["vocab"], data["matrix"]
    x, y, valid_x, valid_y = data["x"], data["y"], data["valid_x"], data["valid_y"]

    recurrent = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[spec["cell"]]
    model = keras.Sequential(
        [
            keras.Input(shape=(s["seq_len"],), dtype="int32"),
            keras.layers.Embedding(
                len(vocab), matrix.shape[1], embeddings_initializer=keras.initializers.Constant(matrix), trainable=False
            ),
            *[recurrent(s["units"], return_sequences=True) for _ in range(s["layers"])],
            keras.layers.Dense(len(vocab), activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(s["learning_rate"]), loss="sparse_categorical_crossentropy")
    tokens_per_step = s["batch_size"] * s["seq_len"]
    budget, timer = WallClockBudget(spec["budget_seconds"]), Throughput(tokens_per_step)
    model.fit(
        x,
        y,
        batch_size=s["batch_size"],
        epochs=MANY_EPOCHS,
        validation_data=(valid_x, valid_y),
        shuffle=True,
        callbacks=[timer, budget],
        verbose=2,
    )
    valid_loss = float(model.evaluate(valid_x, valid_y, batch_size=s["batch_size"], verbose=0))
    return {
        "tokens_per_second": timer.tokens_per_second,
        "tokens_per_cpu_second": timer.tokens_per_cpu_second,
        "valid_perplexity": math.exp(min(valid_loss, 700.0)),
        "steps": budget.steps,
        "epochs": round(budget.steps / math.ceil(len(x) / s["batch_size"]), 2),
        "train_seconds": round(budget.elapsed, 1),
        **_data_facts(data),
    }


def work(spec):
    common.log(f"{NAME}: {spec['cell']} / {spec['impl']}, {spec['budget_seconds']:g} s budget")
    return {"tftune": _work_tftune, "keras": _work_keras, "pytorch": _work_pytorch}[spec["impl"]](spec)


# === The benchmark ===


def measure(args):
    from tftune.recipe import load_recipe

    sizes = SMOKE if args.smoke else FULL
    pytorch_threads = pytorch.tensorflow_threads() if pytorch.version() else None
    budget_seconds = args.budget_seconds or (SMOKE_BUDGET_SECONDS if args.smoke else 300.0)
    cells = (args.cells or ("lstm" if args.smoke else ",".join(CELLS))).split(",")
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        raise SystemExit(f"error: unknown cell(s) {', '.join(unknown)}; expected {', '.join(CELLS)}")

    with tempfile.TemporaryDirectory(prefix="tftune-bench-lm-") as tmp:
        corpus_label, corpus, valid_fraction = choose_corpus(args.smoke, tmp)
        fixed = [
            f"embeddings.path={json.dumps(str(common.SHIPPED_GLOVE))}",
            "embeddings.format=glove",
            f"pretrain.valid_fraction={valid_fraction!r}",
            f"encoder.units={sizes['units']}",
            f"encoder.layers={sizes['layers']}",
            "encoder.dropout=0.0",
            f"vocab.max_size={sizes['vocab_max_size']}",
            f"pretrain.seq_len={sizes['seq_len']}",
            f"pretrain.batch_size={sizes['batch_size']}",
            f"pretrain.epochs={MANY_EPOCHS}",
            "precision.policy=float32",
        ]
        results = {}
        for cell in cells:
            recipe_name = args.recipe or CELL_RECIPES[cell]
            overrides = fixed + [f"encoder.cell={cell}"] + args.overrides
            recipe = load_recipe(recipe_name, overrides)
            # The Keras side follows whatever the recipe ends up with, --set included.
            settings = {
                "seq_len": recipe.pretrain.seq_len,
                "batch_size": recipe.pretrain.batch_size,
                "units": recipe.encoder.units,
                "layers": recipe.encoder.layers,
                "vocab_max_size": recipe.vocab.max_size,
                "learning_rate": recipe.pretrain.learning_rate,
                "min_freq": recipe.vocab.min_freq,
                "lowercase": recipe.embeddings.lowercase,
                "oov": recipe.embeddings.oov,
                "seed": recipe.pretrain.seed,
            }
            shared = {
                "corpus": [str(path) for path in corpus],
                "valid_fraction": valid_fraction,
                "vectors": recipe.embeddings.path,
                "vectors_format": recipe.embeddings.format,
                "budget_seconds": budget_seconds,
                "settings": settings,
            }
            impls = ("keras", "tftune", "pytorch") if pytorch_threads else ("keras", "tftune")
            specs = [{**shared, "name": f"{cell}/{impl}", "impl": impl, "cell": cell, "recipe": recipe_name,
                      "recipe_overrides": overrides, "run_dir": str(Path(tmp) / f"{cell}-pretrain"),
                      "pytorch_threads": pytorch_threads} for impl in impls]
            if args.smoke:  # one worker runs them all; PyTorch loads before TensorFlow (`_work_pytorch`)
                specs.sort(key=lambda spec: spec["impl"] != "pytorch")
            runs = dict(zip((spec["impl"] for spec in specs), common.run_workers(f"bench.{NAME}", specs,
                                                                                 fresh=not args.smoke)))
            results[cell] = _compared({impl: runs[impl] for impl in impls}, recipe_name, settings)
    common.log("timing TensorFlow's matmul peak")
    matmul_peak = common.tensorflow_matmul_peak_gflops(**(SMOKE_MATMUL if args.smoke else {}))
    return {
        "config": {
            "corpus": corpus_label,
            "corpus_files": [common.display_path(path) for path in corpus],
            "vectors": f"{common.display_path(recipe.embeddings.path)} (the original report used 100-d GloVe)",
            **{key: value for key, value in settings.items() if key != "learning_rate"},
            "budget_seconds": budget_seconds,
            "tftune_recipes": {cell: result["recipe"] for cell, result in results.items()},
            "tftune_overrides": args.overrides,
            "tftune_dropout": recipe.encoder.dropout,
            "tftune_lm_output": recipe.pretrain.output,
            "tftune_num_sampled": recipe.pretrain.num_sampled,
            "pytorch_threads": pytorch_threads,
        },
        "tensorflow_matmul_peak_gflop_per_second": round(matmul_peak, 1),
        "cells": results,
    }


RATIO_KEYS = ("tokens_per_second", "tokens_per_cpu_second", "valid_perplexity", "peak_rss_mb")


def _compared(runs, recipe_name, settings):
    """One cell's runs with their ratios: tftune / Keras, and tftune / PyTorch when it ran."""
    fingerprints = {impl: run.pop("vocab_fingerprint") for impl, run in runs.items()}
    tftune_run, keras_run = runs["tftune"], runs["keras"]
    result = {
        **runs,
        "recipe": recipe_name,
        "learning_rate": settings["learning_rate"],
        "same_vocabulary": len(set(fingerprints.values())) == 1,
        "ratios": {key: common.ratio(tftune_run[key], keras_run[key]) for key in RATIO_KEYS},
    }
    if "pytorch" in runs:
        result["ratios_vs_pytorch"] = {key: common.ratio(tftune_run[key], runs["pytorch"][key]) for key in RATIO_KEYS}
    else:
        result["pytorch"] = pytorch.NOT_INSTALLED
    return result


def _number(value, digits=0):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def summary(result):
    parts = []
    for cell, runs in result["cells"].items():
        tftune_run, keras_run, ratios = runs["tftune"], runs["keras"], runs["ratios"]
        parts.append(
            f"{cell} {_number(ratios['tokens_per_second'], 2)}x tokens/s "
            f"({_number(tftune_run['tokens_per_second'])} vs {_number(keras_run['tokens_per_second'])}), "
            f"{_number(ratios['tokens_per_cpu_second'], 2)}x per CPU second, "
            f"perplexity {_number(tftune_run['valid_perplexity'], 1)} vs {_number(keras_run['valid_perplexity'], 1)}; "
            f"PyTorch {_pytorch_cell(runs)}"
        )
    config, machine = result["config"], result["machine"]
    return (
        f"{NAME} (tftune vs Keras, {config['corpus']}, {config['budget_seconds']:g} s each; CPU flags "
        f"{' '.join(machine.get('cpu_flags', [])) or 'unknown'}, TensorFlow "
        f"{SMOKE_MATMUL['size'] if result['smoke'] else 2048}² matmul "
        f"{result['tensorflow_matmul_peak_gflop_per_second']} GFLOP/s): " + "; ".join(parts)
    )


def _pytorch_cell(runs):
    """PyTorch's side of a cell in one phrase: tokens/s and perplexity, or "not installed"."""
    peer = runs["pytorch"]
    if isinstance(peer, str):
        return peer
    return (f"{_number(peer['tokens_per_second'])} tokens/s, perplexity {_number(peer['valid_perplexity'], 1)} "
            f"(tftune x{_number(runs['ratios_vs_pytorch']['tokens_per_second'], 2)} tokens/s)")


def markdown(result):
    config = result["config"]
    any_run = next(iter(result["cells"].values()))["keras"]
    output = config["tftune_lm_output"]
    if output == "sampled":
        output += f" softmax of {config['tftune_num_sampled']:,} words"
    lines = [
        "### Language-model pretraining (`python -m bench.lm_throughput`)",
        "",
        f"Corpus {config['corpus']}: {any_run['train_tokens']:,} training / {any_run['valid_tokens']:,} validation "
        f"tokens, vocabulary {any_run['vocab_size']:,}; {config['vectors']}; sequence {config['seq_len']}, "
        f"batch {config['batch_size']}, {config['layers']} × {config['units']} units; "
        f"{config['budget_seconds']:g} s of training each, Adam at the cell's recipe's learning rate "
        f"({', '.join(f'{cell} `{name}`' for cell, name in config['tftune_recipes'].items())}) on both sides; tftune: "
        f"LM output: {output}, dropout {config['tftune_dropout']:g}. Keras: full softmax. PyTorch: "
        + (f"`nn.AdaptiveLogSoftmaxWithLoss` (cutoffs {', '.join(map(str, pytorch.ADAPTIVE_CUTOFFS))}), no "
           f"dropout, {config['pytorch_threads']} threads (as many as TensorFlow's)" if config.get("pytorch_threads")
           else pytorch.NOT_INSTALLED)
        + ". Perplexity: validation, over the whole vocabulary (full softmax; PyTorch: its adaptive softmax's "
        "distribution), after the budget. CPU flags: "
        f"{', '.join(result['machine'].get('cpu_flags', [])) or 'not recorded'}; TensorFlow's 2048² matmul: "
        f"{result.get('tensorflow_matmul_peak_gflop_per_second', '—')} GFLOP/s.",
        "",
        "| cell | tftune tokens/s | Keras tokens/s | ratio | PyTorch tokens/s | tftune / PyTorch | tftune tokens/CPU s "
        "| Keras tokens/CPU s | ratio | tftune perplexity | Keras perplexity | PyTorch perplexity | tftune steps | "
        "Keras steps | tftune peak RSS (MiB) | Keras peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell, runs in result["cells"].items():
        t, k = runs["tftune"], runs["keras"]
        peer = runs.get("pytorch", pytorch.NOT_INSTALLED)
        installed = not isinstance(peer, str)
        lines.append(
            f"| {cell} | {_number(t['tokens_per_second'])} | {_number(k['tokens_per_second'])} | "
            f"{_number(runs['ratios']['tokens_per_second'], 2)}× | "
            f"{_number(peer['tokens_per_second']) if installed else peer} | "
            f"{_number(runs['ratios_vs_pytorch']['tokens_per_second'], 2) + '×' if installed else '—'} | "
            f"{_number(t.get('tokens_per_cpu_second'))} | "
            f"{_number(k.get('tokens_per_cpu_second'))} | {_number(runs['ratios'].get('tokens_per_cpu_second'), 2)}× | "
            f"{_number(t['valid_perplexity'], 1)} | "
            f"{_number(k['valid_perplexity'], 1)} | {_number(peer['valid_perplexity'], 1) if installed else '—'} | "
            f"{t['steps']:,} | {k['steps']:,} | "
            f"{_number(t['peak_rss_mb'])} | {_number(k['peak_rss_mb'])} |"
        )
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "tftune LM pretraining vs a plain Keras LM.", measure, summary, add_arguments, work, argv)


if __name__ == "__main__":
    main()
