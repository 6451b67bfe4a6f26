"""Serving: the exported raw-string SavedModel against the in-process Keras classifier.

- **SavedModel**: `tf.saved_model.load(export).signatures["serving_default"]` on raw strings;
  tokenization, vocabulary lookup and truncation run inside the graph.
- **Keras** (the baseline): the same classifier rebuilt in this process from the run's weights,
  called as `model(ids, training=False)` on ids tokenized beforehand and padded to the longest
  document of each batch. `model.predict_on_batch` (a compiled function) is measured too.
- **Python tokenizer**: `Vocabulary.encode` with the run's `Tokenizer`, plus truncation, which
  the Keras path needs before the model: its cost is reported separately.

Throughput is documents/s at batch 64 over repeated passes of the documents (after one warm-up
pass); latency is p50/p99 of single-document calls. Documents: the shipped authors test
paragraphs. The finetune run is `--run DIR`, or one made in a temporary directory with the
`lstm-glove` architecture (2 × 128 LSTM units, max_len 200) trained for one short epoch on a
slice of the shipped data: serving speed does not depend on how well the model was trained.
Ratios are SavedModel / Keras.

Example:

```sh
python -m bench.serving --run runs/demo-finetune
```
"""

import csv
import tempfile
import time
from pathlib import Path

from bench import common

NAME = "serving"
RECIPE = "lstm-glove"
FULL = {"corpus_lines": 400, "train_every": 5, "valid_rows": 100, "docs": None, "latency_docs": 200,
        "min_seconds": 10.0}
SMOKE = {"corpus_lines": 100, "train_every": 50, "valid_rows": 20, "docs": 32, "latency_docs": 10, "min_seconds": 0.05}
SMOKE_OVERRIDES = ["encoder.units=16", "encoder.layers=1", "vocab.max_size=3000", "pretrain.seq_len=20",
                   "finetune.max_len=60", "finetune.batch_size=16"]


def add_arguments(parser):
    parser.add_argument("--run", type=Path, default=None, help="a finetune run directory [default: train a small one]")
    parser.add_argument("--batch-size", type=int, default=64, help="documents per call for throughput")


# === The finetune run ===


def _write_rows(rows, path):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _labeled_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["text"], row["label"]) for row in csv.DictReader(f)]


def make_run(tmp, sizes, smoke):
    """Pretrains and fine-tunes a briefly trained model of the recipe's architecture; returns the run."""
    from tftune.finetuning import finetune
    from tftune.inputs import corpus_data, labeled_data
    from tftune.pretraining import pretrain
    from tftune.recipe import load_recipe

    lines = common.SHIPPED_CORPUS.read_text(encoding="utf-8").splitlines()[: sizes["corpus_lines"]]
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Every n-th row keeps all five authors (the files are grouped by label).
    train = _write_rows(_labeled_rows(common.AUTHORS / "train.csv")[:: sizes["train_every"]], tmp / "train.csv")
    valid_rows = _labeled_rows(common.AUTHORS / "valid.csv")
    step = max(1, len(valid_rows) // sizes["valid_rows"])
    valid = _write_rows(valid_rows[::step], tmp / "valid.csv")
    overrides = [
        "pretrain.epochs=1",
        "finetune.epochs=1",
        "finetune.unfreeze=all",
        "precision.policy=float32",
        *(SMOKE_OVERRIDES if smoke else []),
    ]
    recipe = load_recipe(RECIPE, overrides)
    common.log(f"{NAME}: training a small finetune run to serve")
    pretrain(recipe, tmp / "pretrain", corpus_data(corpus))
    finetune(recipe, tmp / "pretrain", tmp / "finetune", labeled_data(train, valid))
    return tmp / "finetune"


def load_keras_classifier(run):
    """The run's classifier rebuilt in this process, with its vocabulary, tokenizer and max_len."""
    from tftune.runs import FinetuneRun

    run_files = FinetuneRun.open(run)
    recipe, vocab = run_files.recipe, run_files.vocab
    settings = recipe.finetune
    classifier = run_files.load_model()
    return classifier, vocab, run_files.tokenizer, settings.max_len, recipe


# === Timing ===


def docs_per_second(call, batches, min_seconds):
    """Documents/s over whole passes of `batches`, after one warm-up pass, for at least `min_seconds`."""
    for batch in batches:
        call(batch)
    docs, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            call(batch)
            docs += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return docs / elapsed


def latency_ms(call, singles, warmup=3):
    """p50 and p99 milliseconds of `call` on each single-document input."""
    import numpy as np

    for single in singles[:warmup]:
        call(single)
    times = []
    for single in singles:
        started = time.perf_counter()
        call(single)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3)}


def pad(id_lists):
    """Right-pads with 0 to the longest document, as the exported graph does."""
    import numpy as np

    batch = np.zeros((len(id_lists), max(len(ids) for ids in id_lists)), dtype="int32")
    for row, ids in enumerate(id_lists):
        batch[row, : len(ids)] = ids
    return batch


def measure(args):
    import keras
    import tensorflow as tf

    from tftune.batches import truncate
    from tftune.data import read_labeled
    from tftune.export import SIGNATURE, find_export

    sizes = SMOKE if args.smoke else FULL
    keras.mixed_precision.set_global_policy("float32")
    with tempfile.TemporaryDirectory(prefix="tftune-bench-serving-") as tmp:
        run = args.run if args.run is not None else make_run(Path(tmp), sizes, args.smoke)
        serve = tf.saved_model.load(str(find_export(run))).signatures[SIGNATURE]
        classifier, vocab, tokenizer, max_len, recipe = load_keras_classifier(run)
        texts = read_labeled(common.AUTHORS / "test.csv")[0][: sizes["docs"]]
        ids = truncate(vocab.encode(texts, tokenizer), max_len)
        size = args.batch_size
        text_batches = [tf.constant(texts[i : i + size]) for i in range(0, len(texts), size)]
        id_batches = [pad(ids[i : i + size]) for i in range(0, len(ids), size)]
        single_texts = [tf.constant([text]) for text in texts[: sizes["latency_docs"]]]
        single_ids = [pad([doc]) for doc in ids[: sizes["latency_docs"]]]

        def saved_model(texts_tensor):
            return serve(text=texts_tensor)["probabilities"].numpy()

        def keras_call(batch):
            return classifier(batch, training=False).numpy()

        def tokenize(batch_texts):
            return truncate(vocab.encode(batch_texts, tokenizer), max_len)

        paths = {
            "savedmodel": (saved_model, text_batches, single_texts),
            "keras": (keras_call, id_batches, single_ids),
            "keras_predict_on_batch": (classifier.predict_on_batch, id_batches, single_ids),
            "python_tokenizer": (
                tokenize,
                [texts[i : i + size] for i in range(0, len(texts), size)],
                [[text] for text in texts[: sizes["latency_docs"]]],
            ),
        }
        results = {}
        for name, (call, batches, singles) in paths.items():
            common.log(f"{NAME}: {name}")
            results[name] = {
                "docs_per_second": docs_per_second(call, batches, sizes["min_seconds"]),
                "latency_ms": latency_ms(call, singles),
            }
        run_label = common.display_path(run) if args.run is not None else (
            f"a small run of recipe {RECIPE}" + (" (smoke sizes)" if args.smoke else "") + ", trained briefly")
        encoder = recipe.encoder
    keras_rate, tokenizer_rate = results["keras"]["docs_per_second"], results["python_tokenizer"]["docs_per_second"]
    saved_latency, keras_latency = results["savedmodel"]["latency_ms"], results["keras"]["latency_ms"]
    return {
        "config": {
            "run": run_label,
            "model": f"{encoder.layers} × {encoder.units} {encoder.cell}, max_len {max_len}",
            "docs": len(texts),
            "docs_source": common.display_path(common.AUTHORS / "test.csv"),
            "mean_tokens": round(sum(len(doc) for doc in ids) / len(ids), 1),
            "batch_size": size,
            "latency_docs": len(single_texts),
        },
        **results,
        "keras_with_python_tokenizer_docs_per_second": 1 / (1 / keras_rate + 1 / tokenizer_rate),
        "ratios": {
            "docs_per_second": common.ratio(results["savedmodel"]["docs_per_second"], keras_rate),
            "latency_p50": common.ratio(saved_latency["p50"], keras_latency["p50"]),
            "latency_p99": common.ratio(saved_latency["p99"], keras_latency["p99"]),
        },
    }


def summary(result):
    saved, keras_run, tokenizer = result["savedmodel"], result["keras"], result["python_tokenizer"]
    return (
        f"{NAME} (SavedModel vs in-process Keras, batch {result['config']['batch_size']}): "
        f"{saved['docs_per_second']:,.0f} vs {keras_run['docs_per_second']:,.0f} docs/s "
        f"({result['ratios']['docs_per_second']:.2f}x); batch-1 p50 {saved['latency_ms']['p50']:.1f} vs "
        f"{keras_run['latency_ms']['p50']:.1f} ms, p99 {saved['latency_ms']['p99']:.1f} vs "
        f"{keras_run['latency_ms']['p99']:.1f} ms; Python tokenizer {tokenizer['docs_per_second']:,.0f} docs/s"
    )


def markdown(result):
    config = result["config"]
    names = {
        "savedmodel": "SavedModel `serving_default` (raw strings)",
        "keras": "Keras `model(ids)` (token ids)",
        "keras_predict_on_batch": "Keras `predict_on_batch(ids)` (token ids)",
        "python_tokenizer": "Python tokenizer + vocabulary only",
    }
    lines = [
        "### Serving (`python -m bench.serving`)",
        "",
        f"Model: {config['model']} ({config['run']}); {config['docs']:,} documents from {config['docs_source']} "
        f"({config['mean_tokens']:g} tokens on average); latency over {config['latency_docs']} single documents.",
        "",
        f"| path | docs/s at batch {config['batch_size']} | p50 ms (batch 1) | p99 ms (batch 1) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in names.items():
        row, latency = result[key], result[key]["latency_ms"]
        lines.append(f"| {label} | {row['docs_per_second']:,.0f} | {latency['p50']:.2f} | {latency['p99']:.2f} |")
    lines += [
        "",
        f"Keras plus the Python tokenizer: {result['keras_with_python_tokenizer_docs_per_second']:,.0f} docs/s. "
        f"SavedModel / Keras: {result['ratios']['docs_per_second']:.2f}× docs/s, "
        f"{result['ratios']['latency_p50']:.2f}× p50 latency.",
    ]
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "SavedModel vs in-process Keras serving.", measure, summary, add_arguments, argv=argv)


if __name__ == "__main__":
    main()
