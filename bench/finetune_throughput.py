"""Classifier training: tftune's length-bucketed batches against batches padded to `max_len`,
and `fit` on raw strings against both.

The same tftune classifier (the recipe's encoder and head, default `lstm-glove`: 2 × 128 LSTM
units, concat pooling over the states and the word vectors; the shipped 50-d GloVe vectors
aligned to a vocabulary built from the task's training text) trains on three input pipelines:

- **bucketed**: `tftune.batches.classification_dataset` (batches of similar lengths, each padded
  to its longest document) of the truncated ids — what `tftune finetune` uses;
- **padded** (the plain baseline): `tf.data` `padded_batch` of the same ids, every document
  padded to `max_len`;
- **raw_strings**: the classifier given a `TextPreprocessor` (the bench's vocabulary, the
  tokenizer's lowercasing, `max_len`) and trained by `model.fit(texts, targets, batch_size=...)`
  on the raw strings, as a user of `tftune.load` would; the task turns them into batches.

For each, one short warm-up fit traces the model, then one timed epoch gives examples/s; the
share of real (non-pad) tokens is counted over one epoch of batches (for raw_strings, of the
batches the task builds from the texts). Tasks: SST-2 and TREC-6 from `../shared/data` (skipped
with a message when absent) and the shipped authors task, each on its training split. The
ratios are bucketed / padded and raw_strings / bucketed examples/s.

Example:

```sh
python -m bench.finetune_throughput --max-examples 2000
```
"""

import time

from bench import common

NAME = "finetune_throughput"
TASKS = ("sst2", "trec6", "authors")
SMOKE = {"examples": 96, "layers": 1, "units": 16, "max_len": 60, "batch_size": 16, "warmup_steps": 2}
WARMUP_STEPS = 5
PIPELINES = ("bucketed", "padded", "raw_strings")


def add_arguments(parser):
    parser.add_argument("--recipe", default="lstm-glove", help="recipe whose encoder, head and max_len are used")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="use at most this many training examples per task [default: all]")


# === Tasks ===


def _read_prefixed_lines(path, encoding, label_of):
    texts, labels = [], []
    for line in path.read_text(encoding=encoding).splitlines():
        if line.strip():
            first, text = line.split(" ", 1)
            texts.append(text)
            labels.append(label_of(first))
    return texts, labels


def load_task(name):
    """`(texts, labels, source)` of a task's training split, or a string saying why it is skipped."""
    from tftune.data import read_labeled

    if name == "authors":
        path = common.AUTHORS / "train.csv"
        return (*read_labeled(path), common.display_path(path))
    if name == "sst2":
        # `label sentence` per line; 0 = negative, 1 = positive.
        path = common.SHARED_DATA / "sst" / "stsa.binary.train"
        label_of, encoding = str, "utf-8"
    else:
        # `COARSE:fine question ...`; one byte of the training file is not UTF-8.
        path = common.SHARED_DATA / "trec6" / "train_5500.label"
        label_of, encoding = (lambda field: field.split(":", 1)[0]), "latin-1"
    if not path.is_file():
        return f"{common.display_path(path)} not found"
    return (*_read_prefixed_lines(path, encoding, label_of), common.display_path(path))


# === Pipelines ===


def padded_dataset(id_lists, labels, batch_size, max_len, seed=0):
    """The plain baseline: every document padded with 0 to `max_len`, shuffled like tftune's."""
    import numpy as np
    import tensorflow as tf

    lengths = np.asarray([len(ids) for ids in id_lists], dtype="int64")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat_ids = tf.constant(np.concatenate(id_lists).astype("int32"))
    dataset = tf.data.Dataset.from_tensor_slices((starts, lengths, np.asarray(labels, dtype="int32")))
    dataset = dataset.shuffle(len(id_lists), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda start, length, label: (flat_ids[start : start + length], label))
    return dataset.padded_batch(batch_size, padded_shapes=([max_len], [])).prefetch(tf.data.AUTOTUNE)


def count_tokens(dataset):
    """Real (non-pad) tokens, all token slots and batches in one epoch of a dataset."""
    import numpy as np

    real = slots = batches = 0
    for ids, _ in dataset:
        ids = ids.numpy()
        real += int(np.count_nonzero(ids))
        slots += ids.size
        batches += 1
    return real, slots, batches


def time_training(build, dataset, n_examples, warmup_steps):
    """Examples/s of one epoch of `fit`, after a warm-up fit that traces the model."""
    model = build()
    model.fit(dataset.take(warmup_steps), epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return {"epoch_seconds": round(seconds, 2), "examples_per_second": n_examples / seconds}


def time_raw_training(build, texts, targets, batch_size, warmup_steps):
    """Examples/s of one epoch of `fit` on raw strings, after a warm-up fit on the first
    `warmup_steps` batches' texts that traces the model; as `time_training` otherwise."""
    import numpy as np

    model = build()
    warmup = warmup_steps * batch_size
    model.fit(texts[:warmup], np.asarray(targets[:warmup]), batch_size=batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(texts, np.asarray(targets), batch_size=batch_size, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return {"epoch_seconds": round(seconds, 2), "examples_per_second": len(texts) / seconds}


def measure_task(name, recipe, vectors, sizes, max_examples):
    loaded = load_task(name)
    if isinstance(loaded, str):
        common.log(f"{NAME}: skipping {name}: {loaded}")
        return {"skipped": loaded}
    texts, labels, source = loaded
    return measure_loaded_task(name, (texts[:max_examples], labels[:max_examples], source), recipe, vectors, sizes)


def measure_loaded_task(name, task, recipe, vectors, sizes, pipelines=PIPELINES):
    """Bucketed against padded training (and raw strings against bucketed) on `task`, `(texts,
    labels, source)`, at `sizes` (max_len, batch, ...); `pipelines`: which of `PIPELINES` to run."""
    import keras
    import numpy as np

    from tftune.batches import classification_dataset, truncate
    from tftune.embeddings import align
    from tftune.models import TextBackbone, TextClassifier, TextPreprocessor
    from tftune.model_configs import backbone_config, classifier_config
    from tftune.text import Tokenizer, Vocabulary

    texts, labels, source = task
    label_index = {label: i for i, label in enumerate(sorted(set(labels)))}
    targets = [label_index[label] for label in labels]

    tokenizer = Tokenizer(lowercase=recipe.embeddings.lowercase)
    vocab = Vocabulary.build([tokenizer.tokenize(text) for text in texts], recipe.vocab.max_size,
                             recipe.vocab.min_freq)
    matrix, _ = align(vocab, vectors, seed=recipe.finetune.seed)
    max_len, batch_size = sizes["max_len"], sizes["batch_size"]
    ids = truncate(vocab.encode(texts, tokenizer), max_len)
    head = recipe.finetune

    def build(preprocessor=None):
        # The classifier of the recipe, built as tftune builds one (its configs), at the bench's sizes.
        keras.utils.set_random_seed(head.seed)
        config = {**backbone_config(recipe.encoder, *matrix.shape), "num_layers": sizes["layers"],
                  "units": sizes["units"]}
        model = TextClassifier(TextBackbone(**config, embeddings=matrix),
                               **classifier_config(recipe, recipe, len(label_index)), preprocessor=preprocessor)
        model.compile_for_classes()
        return model

    def build_for_text():
        # The preprocessor tftune gives a classifier (`finetuning.build_member_classifier`): the
        # same vocabulary, lowercasing and cut as the ids above.
        return build(TextPreprocessor(vocab, lowercase=tokenizer.lowercase, max_len=max_len))

    datasets = {
        "bucketed": lambda: classification_dataset(ids, targets, batch_size, shuffle=True, seed=head.seed).epochs(0, 1),
        "padded": lambda: padded_dataset(ids, targets, batch_size, max_len, seed=head.seed),
        # One epoch of the batches `fit` makes of the texts (the task's own input pipeline).
        "raw_strings": lambda: build_for_text()._text_dataset(texts, targets, batch_size=batch_size, shuffle=True),
    }
    result = {
        "source": source,
        "examples": len(texts),
        "classes": len(label_index),
        "mean_tokens": round(float(np.mean([len(x) for x in ids])), 1),
        "longest": max(len(x) for x in ids),
    }
    for pipeline in pipelines:
        common.log(f"{NAME}: {name} / {pipeline}: {len(texts):,} examples")
        dataset = datasets[pipeline]()
        real, slots, batches = count_tokens(dataset)
        if pipeline == "raw_strings":
            timing = time_raw_training(build_for_text, texts, targets, batch_size, sizes["warmup_steps"])
        else:
            timing = time_training(build, dataset, len(texts), sizes["warmup_steps"])
        result[pipeline] = {
            **timing,
            "real_token_share": round(real / slots, 4),
            "mean_batch_length": round(slots / len(texts), 1),
            "batches": batches,
        }
    result["ratios"] = {}
    if "bucketed" in result and "padded" in result:
        result["ratios"]["examples_per_second"] = common.ratio(result["bucketed"]["examples_per_second"],
                                                               result["padded"]["examples_per_second"])
        result["ratios"]["real_token_share"] = common.ratio(result["bucketed"]["real_token_share"],
                                                            result["padded"]["real_token_share"])
    if "bucketed" in result and "raw_strings" in result:
        result["ratios"]["raw_strings_examples_per_second"] = common.ratio(
            result["raw_strings"]["examples_per_second"], result["bucketed"]["examples_per_second"])
    return result


def measure(args):
    import keras

    from tftune.embeddings import load_vectors
    from tftune.recipe import load_recipe

    keras.mixed_precision.set_global_policy("float32")
    recipe = load_recipe(args.recipe)
    finetune = recipe.finetune
    if args.smoke:
        sizes = SMOKE
    else:
        sizes = {"examples": None, "layers": recipe.encoder.layers, "units": recipe.encoder.units,
                 "max_len": finetune.max_len, "batch_size": finetune.batch_size, "warmup_steps": WARMUP_STEPS}
    max_examples = args.max_examples or sizes["examples"]
    vectors = load_vectors(common.SHIPPED_GLOVE, "glove")
    tasks = {name: measure_task(name, recipe, vectors, sizes, max_examples) for name in TASKS}
    config = {key: value for key, value in sizes.items() if key != "examples"}
    return {
        "config": {
            "recipe": args.recipe,
            "cell": recipe.encoder.cell,
            "head": finetune.head,
            "pool_embeddings": finetune.pool_embeddings,
            "max_examples": max_examples,
            **config,
        },
        "tasks": tasks,
    }


def summary(result):
    parts = []
    for name, task in result["tasks"].items():
        if "skipped" in task:
            parts.append(f"{name} skipped ({task['skipped']})")
            continue
        parts.append(
            f"{name} {task['ratios']['examples_per_second']:.2f}x examples/s "
            f"({task['bucketed']['examples_per_second']:,.0f} vs {task['padded']['examples_per_second']:,.0f}), "
            f"real tokens {task['bucketed']['real_token_share']:.0%} vs {task['padded']['real_token_share']:.0%}, "
            f"raw strings {task['raw_strings']['examples_per_second']:,.0f} examples/s "
            f"({task['ratios']['raw_strings_examples_per_second']:.2f}x bucketed)"
        )
    return (f"{NAME} (bucketed vs padded to max_len {result['config']['max_len']}, raw strings vs bucketed): "
            + "; ".join(parts))


def markdown(result):
    config = result["config"]
    lines = [
        "### Classifier training (`python -m bench.finetune_throughput`)",
        "",
        f"Recipe `{config['recipe']}` classifier ({config['layers']} × {config['units']} {config['cell']} units, "
        f"{config['head']} head, pooled word vectors {'on' if config['pool_embeddings'] else 'off'}), batch "
        f"{config['batch_size']}, documents cut to {config['max_len']} tokens; one timed epoch after "
        f"{config['warmup_steps']} warm-up steps.",
        "",
        "| task | examples | mean tokens | bucketed examples/s | padded examples/s | ratio | "
        "bucketed real tokens | padded real tokens | raw strings examples/s | raw strings / bucketed | "
        "raw strings real tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, task in result["tasks"].items():
        if "skipped" in task:
            lines.append(f"| {name} | skipped: {task['skipped']} | | | | | | | | | |")
            continue
        bucketed, padded, raw = task["bucketed"], task["padded"], task.get("raw_strings")
        raw_cells = ("— | — | —" if raw is None else  # results saved before the raw-strings pipeline
                     f"{raw['examples_per_second']:,.0f} | {task['ratios']['raw_strings_examples_per_second']:.2f}× | "
                     f"{raw['real_token_share']:.1%}")
        lines.append(
            f"| {name} | {task['examples']:,} | {task['mean_tokens']:g} | {bucketed['examples_per_second']:,.0f} | "
            f"{padded['examples_per_second']:,.0f} | {task['ratios']['examples_per_second']:.2f}× | "
            f"{bucketed['real_token_share']:.1%} | {padded['real_token_share']:.1%} | {raw_cells} |"
        )
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "Bucketed vs padded classifier training, and fit on raw strings.", measure, summary, add_arguments, argv=argv)


if __name__ == "__main__":
    main()
