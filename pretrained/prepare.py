"""Rebuild the data shipped in `pretrained/` from the full public sources.

Run from the repository root with the source files in a folder laid out as
`glove-6b-50d-top20k/`, `word2vec-googlenews-300d-top10k/`, `wikitext-2/`,
`review_polarity_v2/` and `gutenberg/` (see each PROVENANCE.md for where they come from):

    python pretrained/prepare.py SOURCE_DIR

The outputs are deterministic; `pretrained/README.md` lists their checksums.
"""

import csv
import hashlib
import random
import re
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORD2VEC_ROWS = 5000
# Pang & Lee's cross-validation tags: cv000-cv799 train, cv800-cv899 valid, cv900-cv999 test.
SPLIT_BY_FOLD = [(800, "train"), (900, "valid"), (1000, "test")]


def copy_glove(source: Path) -> None:
    shutil.copyfile(
        source / "glove-6b-50d-top20k" / "glove.6B.50d.top20k.txt",
        HERE / "glove.6B.50d.top20k.txt",
    )


def subset_word2vec(source: Path) -> None:
    """Keeps the first WORD2VEC_ROWS records of the binary file, byte for byte."""
    src = source / "word2vec-googlenews-300d-top10k"
    data = (src / "GoogleNews-vectors-negative300.bolukbasi-norm.top10k.bin").read_bytes()
    header_end = data.index(b"\n") + 1
    _, dim = map(int, data[:header_end].split())
    position = header_end
    for _ in range(WORD2VEC_ROWS):
        position = data.index(b" ", position) + 1 + dim * struct.calcsize("f")
        if data[position : position + 1] == b"\n":
            position += 1
    out = HERE / "word2vec-googlenews-300d-top5k.bin"
    out.write_bytes(b"%d %d\n" % (WORD2VEC_ROWS, dim) + data[header_end:position])


def clean_wikitext(source: Path) -> None:
    """One paragraph per line: headings and blank lines dropped, @-@ style escapes undone."""
    lines = (source / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    out_dir = HERE / "corpus"
    out_dir.mkdir(exist_ok=True)
    kept = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("="):
            continue
        line = re.sub(r" @(.)@ ", r"\1", line)
        kept.append(line)
    (out_dir / "wikitext-2-valid.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")


def split_reviews(source: Path) -> None:
    src = source / "review_polarity_v2"
    texts = (src / "review_polarity.txt").read_text(encoding="utf-8").splitlines()
    with open(src / "review_polarity.docs.tsv", encoding="utf-8") as f:
        docs = list(csv.DictReader(f, delimiter="\t"))
    splits = {name: [] for _, name in SPLIT_BY_FOLD}
    for doc in docs:
        label, filename = doc["doc"].split("/")
        fold = int(filename[2:5])
        name = next(name for limit, name in SPLIT_BY_FOLD if fold < limit)
        text = texts[int(doc["first_line"]) - 1]
        splits[name].append((text, "positive" if label == "pos" else "negative"))
    out_dir = HERE / "movie-reviews"
    out_dir.mkdir(exist_ok=True)
    for name, rows in splits.items():
        with open(out_dir / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)


AUTHORS = ("austen", "chesterton", "melville", "shakespeare", "whitman")
PER_AUTHOR = {"train": 700, "valid": 100, "test": 100}


def split_authors(source: Path) -> None:
    """Paragraphs of five public-domain authors, labeled by author.

    Each book's paragraphs (10 to 150 words) are cut by position into its first 80% (train),
    next 10% (valid) and last 10% (test), so no split shares a passage with another; then a
    fixed number per author and split is drawn with a fixed seed.
    """
    src = source / "gutenberg"
    lines = (src / "gutenberg.txt").read_text(encoding="utf-8").split("\n")
    with open(src / "gutenberg.docs.tsv", encoding="utf-8") as f:
        books = list(csv.DictReader(f, delimiter="\t"))
    pools = {(author, split): [] for author in AUTHORS for split in PER_AUTHOR}
    for book in books:
        author = book["doc"].split("-")[0]
        if author not in AUTHORS:
            continue
        start = int(book["first_line"]) - 1
        paragraphs = [p for p in lines[start : start + int(book["lines"])] if 10 <= len(p.split()) <= 150]
        cut_valid, cut_test = int(len(paragraphs) * 0.8), int(len(paragraphs) * 0.9)
        pools[author, "train"] += paragraphs[:cut_valid]
        pools[author, "valid"] += paragraphs[cut_valid:cut_test]
        pools[author, "test"] += paragraphs[cut_test:]
    rng = random.Random(0)
    out_dir = HERE / "authors"
    out_dir.mkdir(exist_ok=True)
    for split, count in PER_AUTHOR.items():
        rows = [(text, author) for author in AUTHORS for text in rng.sample(pools[author, split], count)]
        rng.shuffle(rows)
        with open(out_dir / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)


def checksums() -> None:
    for path in sorted(HERE.rglob("*")):
        if path.is_file() and path.suffix in {".txt", ".bin", ".csv"}:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"{path.relative_to(HERE)}\t{path.stat().st_size}\t{digest}")


if __name__ == "__main__":
    source_dir = Path(sys.argv[1])
    copy_glove(source_dir)
    subset_word2vec(source_dir)
    clean_wikitext(source_dir)
    split_reviews(source_dir)
    split_authors(source_dir)
    checksums()
