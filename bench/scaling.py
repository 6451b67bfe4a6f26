"""Cost against size: LM pretraining as the vocabulary grows, classifier training as `max_len` grows.

**Vocabulary.** For each vocabulary size (20,000, 100,000 and 400,000 words: the first V words of
GloVe 6B 50d, which are frequency-ordered; 400,000 is the whole set, tftune's default vectors),
a fresh process trains tftune's `LanguageModel` (2 × 256 units, sequence 70, batch 64, AR/TAR as
in the LSTM recipe) on the shipped corpus, its tokens mapped into that vocabulary, for a fixed
number of timed steps after the first (traced) one, with each of two heads trained on a sampled
softmax of 1,024 words: `sampled` (the recipe's: a trainable 256 × V kernel) and `tied_sampled`
(the frozen word vectors as output vectors, a trainable bias per word). It reports tokens/s,
tokens per CPU second, peak RSS, and what the vocabulary itself costs in memory: the frozen
embedding (V × 50) and the trainable head with its two Adam moments (3 × 256 × V, or 3 × V for
`tied_sampled`). The baseline, run in the same script at the same sizes, is the plain Keras LM of `bench.lm_throughput`
(frozen `Embedding` → 2 × `LSTM(256)` → `Dense(V, softmax)`, `model.fit`); at 400,000 words its
logits alone would take `batch × seq × V × 4` bytes (7.2 GB) per batch, so that row is not run.
Ratios: tftune / Keras at each size, and each side's tokens/s at V / at 20,000 words (flat = 1).

**Length.** `bench.finetune_throughput`'s comparison (tftune's length-bucketed batches against
batches padded to `max_len`) on the IMDb subset's training reviews (long documents: 282 tokens on
average when cut to 800) with `max_len` 50, 200 and 800: examples/s, the share of real tokens, and seconds per
thousand real tokens, which bucketing should keep nearly constant.

Example:

```sh
python -m bench.scaling                  # about 10 minutes on 2 cores
python -m bench.scaling --parts length   # one part
python -m bench.scaling --smoke          # tiny sizes, seconds
```
"""

import functools

from bench import common

NAME = "scaling"
PARTS = ("vocabulary", "length")
VOCABULARY_SIZES = (20_000, 100_000, 400_000)
MAX_LENS = (50, 200, 800)
KERAS_LOGITS_LIMIT_GB = 4.0  # the plain Keras LM is not run where one batch's logits exceed this
# Each side of the vocabulary part: tftune with one LM output, or the plain Keras LM (None).
VOCABULARY_SIDES = {"tftune": "sampled", "tftune_tied": "tied_sampled", "keras": None}
LM = {"units": 256, "layers": 2, "seq_len": 70, "batch_size": 64, "timed_steps": 20, "keras_timed_steps": 4}
SMOKE_LM = {"units": 16, "layers": 1, "seq_len": 10, "batch_size": 8, "timed_steps": 2, "keras_timed_steps": 1}
SMOKE_VOCABULARY_SIZES = (2_000, 8_000)
SMOKE_MAX_LENS = (40,)  # no ratio between lengths is taken: one exercises the part
IMDB = common.SHARED_DATA / "imdb-subset" / "train.csv"


def add_arguments(parser):
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--max-examples", type=int, default=2000, help="IMDb reviews in the length part")


# === Vocabulary ===


def vocabulary_and_ids(vocabulary_size, max_tokens):
    """GloVe's first words as a vocabulary of `vocabulary_size` ids, and the shipped corpus encoded in it."""
    import numpy as np

    from tftune.text import SPECIAL_TOKENS, Tokenizer, Vocabulary

    words = (common.PRETRAINED / "glove.6B.50d.words.txt").read_text(encoding="utf-8").splitlines()
    vocab = Vocabulary(words[: vocabulary_size - len(SPECIAL_TOKENS)])
    lines = common.SHIPPED_CORPUS.read_text(encoding="utf-8").splitlines()
    ids = np.concatenate(vocab.encode(lines, Tokenizer(lowercase=True)))
    return vocab, ids[:max_tokens]


@functools.cache
def glove_vectors():
    """All 400,000 words of GloVe 6B 50d, loaded once per process (a --smoke worker runs every side)."""
    from tftune.embeddings import load_vectors

    return load_vectors(common.PRETRAINED / "glove.6B.50d.toml", "npy")


def vocabulary_work(spec):
    """In a worker process: one side (tftune or Keras) at one vocabulary size."""
    import keras
    import numpy as np

    from tftune.callbacks import Throughput
    from tftune.batches import lm_dataset
    from tftune.embeddings import align
    from tftune.models import LanguageModel, build_encoder
    from tftune.recipe import load_recipe

    sizes, vocabulary_size = spec["sizes"], spec["vocabulary_size"]
    common.log(f"{NAME}: vocabulary {vocabulary_size:,} / {spec['side']}")
    keras.backend.clear_session()  # a worker may run several sizes and sides in turn (--smoke)
    keras.utils.set_random_seed(0)
    # The first step (tracing, XLA compilation) is never timed.
    output = VOCABULARY_SIDES[spec["side"]]
    steps = 1 + sizes["keras_timed_steps" if output is None else "timed_steps"]
    vocab, ids = vocabulary_and_ids(vocabulary_size, (steps * sizes["batch_size"] + 1) * sizes["seq_len"] + 1)
    matrix, _ = align(vocab, glove_vectors())
    rss_before_model = common.current_rss_mb()
    pretrain = load_recipe("lstm-glove").pretrain
    optimizer = keras.optimizers.Adam(pretrain.learning_rate, global_clipnorm=1.0)
    if output is not None:
        encoder = build_encoder(matrix, "lstm", sizes["layers"], sizes["units"])
        model = LanguageModel(encoder, output=output, num_sampled=min(pretrain.num_sampled, vocabulary_size),
                              unigram_counts=np.bincount(ids, minlength=vocabulary_size), ar=pretrain.ar,
                              tar=pretrain.tar)
        model.compile(optimizer=optimizer)
    else:
        model = keras.Sequential([
            keras.Input((sizes["seq_len"],), dtype="int32"),
            keras.layers.Embedding(vocabulary_size, matrix.shape[1], weights=[matrix], trainable=False),
            *(keras.layers.LSTM(sizes["units"], return_sequences=True) for _ in range(sizes["layers"])),
            keras.layers.Dense(vocabulary_size, activation="softmax"),
        ])
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    data = lm_dataset(ids, sizes["seq_len"], sizes["batch_size"]).take(steps).repeat()
    throughput = Throughput(tokens_per_step=sizes["batch_size"] * sizes["seq_len"])
    model.fit(data, steps_per_epoch=steps, epochs=1, callbacks=[throughput], shuffle=False, verbose=0)
    return {
        "tokens_per_second": throughput.tokens_per_second,
        "tokens_per_cpu_second": throughput.tokens_per_cpu_second,
        "step_ms": round(1000 * throughput.seconds / throughput.steps, 1),
        "timed_steps": throughput.steps,
        "rss_before_model_mb": rss_before_model,
        "embedding_mb": round(matrix.nbytes / 2**20, 1),
    }


def measure_vocabulary(sizes, vocabulary_sizes, fresh=True):
    """The vocabulary part's rows; each size and side in a fresh process (with `fresh`) or all in one."""
    rows, specs = {}, []
    for vocabulary_size in vocabulary_sizes:
        row = {"head_and_moments_mb": round(3 * sizes["units"] * vocabulary_size * 4 / 2**20, 1),
               # The tied head trains a units × 50 projection (GloVe 6B 50d) and one bias per word.
               "tied_head_and_moments_mb": round(
                   3 * (sizes["units"] * 50 + 50 + vocabulary_size) * 4 / 2**20, 1),
               "keras_logits_gb_per_batch": round(sizes["batch_size"] * sizes["seq_len"] * vocabulary_size * 4 / 1e9, 2)}
        for side in VOCABULARY_SIDES:
            if side == "keras" and row["keras_logits_gb_per_batch"] > KERAS_LOGITS_LIMIT_GB:
                row[side] = {"skipped": f"one batch's logits take {row['keras_logits_gb_per_batch']} GB"}
                continue
            specs.append({"part": "vocabulary", "side": side, "sizes": sizes, "vocabulary_size": vocabulary_size})
        rows[str(vocabulary_size)] = row
    for spec, measured in zip(specs, common.run_workers(f"bench.{NAME}", specs, fresh)):
        rows[str(spec["vocabulary_size"])][spec["side"]] = measured
    smallest = rows[str(vocabulary_sizes[0])]
    for row in rows.values():
        row["ratios"] = {
            **{f"{side}_vs_keras": common.ratio(row[side]["tokens_per_second"], row["keras"].get("tokens_per_second"))
               for side in VOCABULARY_SIDES if side != "keras"},
            **{f"{side}_vs_smallest_vocabulary": common.ratio(row[side].get("tokens_per_second"),
                                                             smallest[side].get("tokens_per_second"))
               for side in VOCABULARY_SIDES},
        }
    return {"config": sizes, "rows": rows}


# === Length ===


def measure_length(args, max_lens):
    import keras

    from bench import finetune_throughput
    from tftune.data import read_labeled
    from tftune.embeddings import load_vectors
    from tftune.recipe import load_recipe

    if not IMDB.is_file():
        common.log(f"{NAME}: skipping the length part: {common.display_path(IMDB)} not found")
        return {"skipped": f"{common.display_path(IMDB)} not found"}
    keras.mixed_precision.set_global_policy("float32")
    recipe = load_recipe("lstm-glove")
    texts, labels = read_labeled(IMDB)
    max_examples = 96 if args.smoke else args.max_examples
    vectors = load_vectors(common.SHIPPED_GLOVE, "glove")
    base = finetune_throughput.SMOKE if args.smoke else {
        "layers": recipe.encoder.layers, "units": recipe.encoder.units, "batch_size": recipe.finetune.batch_size,
        "warmup_steps": finetune_throughput.WARMUP_STEPS}
    rows = {}
    for max_len in max_lens:
        common.log(f"{NAME}: max_len {max_len}")
        sizes = {**base, "max_len": max_len}
        task = (texts[:max_examples], labels[:max_examples], common.display_path(IMDB))
        row = finetune_throughput.measure_loaded_task("imdb", task, recipe, vectors, sizes,
                                                      pipelines=("bucketed", "padded"))
        for pipeline in ("bucketed", "padded"):
            real_tokens = row[pipeline]["real_token_share"] * row[pipeline]["mean_batch_length"] * row["examples"]
            row[pipeline]["seconds_per_1k_real_tokens"] = round(1000 * row[pipeline]["epoch_seconds"] / real_tokens, 4)
        rows[str(max_len)] = row
    return {"config": {**base, "max_examples": max_examples}, "rows": rows}


# === The benchmark ===


def measure(args):
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"error: unknown part(s) {', '.join(unknown)}; expected {', '.join(PARTS)}")
    result = {}
    if "vocabulary" in parts:
        result["vocabulary"] = measure_vocabulary(SMOKE_LM if args.smoke else LM,
                                                  SMOKE_VOCABULARY_SIZES if args.smoke else VOCABULARY_SIZES,
                                                  fresh=not args.smoke)
    if "length" in parts:
        result["length"] = measure_length(args, SMOKE_MAX_LENS if args.smoke else MAX_LENS)
    return result


def summary(result):
    parts = []
    if "vocabulary" in result:
        rows = result["vocabulary"]["rows"].items()
        for side, output in VOCABULARY_SIDES.items():
            if output is not None:
                parts.append(f"tftune ({output}) LM tokens/s by vocabulary: " + ", ".join(
                    f"{int(size):,} {row[side]['tokens_per_second']:,.0f}" for size, row in rows))
    if "length" in result and "rows" in result["length"]:
        parts.append("bucketed examples/s by max_len: " + ", ".join(
            f"{size} {row['bucketed']['examples_per_second']:,.0f} ({row['ratios']['examples_per_second']:.2f}x padded)"
            for size, row in result["length"]["rows"].items()))
    return f"{NAME} (cost by size): " + "; ".join(parts)


def _times(ratio):
    return "—" if ratio is None else f"{ratio:.2f}×"


def _megabytes(side):
    return "—" if "peak_rss_mb" not in side else f"{side['peak_rss_mb']:,.0f}"


def _rate(side):
    return f"skipped ({side['skipped']})" if "skipped" in side else f"{side['tokens_per_second']:,.0f}"


def markdown(result):
    lines = []
    if "vocabulary" in result:
        config = result["vocabulary"]["config"]
        lines += [
            "### LM pretraining by vocabulary size (`python -m bench.scaling --parts vocabulary`)",
            "",
            f"{config['layers']} × {config['units']} LSTM on frozen GloVe 6B 50d (its first V words), sequence "
            f"{config['seq_len']}, batch {config['batch_size']}; tftune: each head trained on a sampled softmax "
            f"of 1,024 words; Keras: full softmax. {config['timed_steps']} (Keras: {config['keras_timed_steps']}) "
            f"timed steps after {config.get('warmup_steps', 1)} untimed one(s), each size and side in a fresh process.",
            "",
            "| vocabulary | tftune head | tftune tokens/s | Keras tokens/s | tftune / Keras | tftune vs the smallest "
            "| tftune peak RSS (MiB) | Keras peak RSS (MiB) | embedding (MiB) | head + Adam moments (MiB) |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for size, row in result["vocabulary"]["rows"].items():
            ratios = row["ratios"]
            for side, output in VOCABULARY_SIDES.items():
                if output is None or side not in row:
                    continue
                head_mb = row["tied_head_and_moments_mb" if output.startswith("tied") else "head_and_moments_mb"]
                lines.append(
                    f"| {int(size):,} | `{output}` | {_rate(row[side])} | {_rate(row['keras'])} | "
                    f"{_times(ratios[f'{side}_vs_keras'])} | {_times(ratios[f'{side}_vs_smallest_vocabulary'])} | "
                    f"{_megabytes(row[side])} | {_megabytes(row['keras'])} | {row[side]['embedding_mb']:,.1f} | "
                    f"{head_mb:,.1f} |"
                )
    if "length" in result and "rows" in result["length"]:
        lines += [
            "",
            "### Classifier training by max_len (`python -m bench.scaling --parts length`)",
            "",
            f"IMDb subset, {result['length']['config']['max_examples']:,} training reviews; the `lstm-glove` "
            "classifier; bucketed (tftune) against padded to max_len (plain `padded_batch`).",
            "",
            "| max_len | mean tokens | bucketed examples/s | padded examples/s | ratio | bucketed real tokens "
            "| bucketed s / 1k real tokens | padded s / 1k real tokens |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for size, row in result["length"]["rows"].items():
            bucketed, padded = row["bucketed"], row["padded"]
            lines.append(
                f"| {size} | {row['mean_tokens']:g} | {bucketed['examples_per_second']:,.0f} | "
                f"{padded['examples_per_second']:,.0f} | {row['ratios']['examples_per_second']:.2f}× | "
                f"{bucketed['real_token_share']:.1%} | {bucketed['seconds_per_1k_real_tokens']:.4f} | "
                f"{padded['seconds_per_1k_real_tokens']:.4f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "LM cost by vocabulary size, classifier cost by max_len.", measure, summary,
                       add_arguments, work=vocabulary_work, argv=argv)


if __name__ == "__main__":
    main()
