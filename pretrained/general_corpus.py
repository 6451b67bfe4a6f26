"""Build the corpus of the shipped general-domain language models from the public sources.

Only text whose licence lets us publish weights trained on it: WikiText-2 (CC BY-SA 3.0), the
NLTK Project Gutenberg selection (public domain), Pang & Lee's movie reviews v2.0 (CC BY 4.0),
and the State of the Union and inaugural addresses (public domain). Penn Treebank (unclear),
Brown (non-commercial) and ABC (none stated) are left out.

Two cuts keep the shipped tasks' held-out text out of pretraining: the last 20% of each book
that `authors/` draws from (its valid and test passages), and the reviews of folds cv800-cv999
(`movie-reviews/` valid and test).

One document in twenty (whole documents: a Wikipedia article, 40 consecutive paragraphs of a
book, a review, a speech) is held out to measure perplexity; they are spread over every source.

Run from the repository root with the source folders laid out as in `prepare.py`:

    python pretrained/general_corpus.py SOURCE_DIR OUT_DIR

It writes `OUT_DIR/train.txt` and `OUT_DIR/valid.txt` (one paragraph per line) and
`OUT_DIR/manifest.json` (per-source counts and checksums). The output is deterministic.
"""

import csv
import hashlib
import json
import re
import sys
from pathlib import Path

from prepare import AUTHORS, SPLIT_BY_FOLD

HELD_OUT_EVERY = 20
BOOK_BLOCK_LINES = 40
AUTHORS_TRAIN_SHARE = 0.8  # as prepare.split_authors cuts each book
FIRST_HELD_OUT_FOLD = SPLIT_BY_FOLD[0][0]


def _docs(source_dir: Path, name: str) -> list[dict]:
    with open(source_dir / name / f"{name}.docs.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _lines(source_dir: Path, folder: str, file: str) -> list[str]:
    return (source_dir / folder / file).read_text(encoding="utf-8").split("\n")


def wikitext_articles(source_dir: Path) -> list[list[str]]:
    """WikiText-2 valid + test articles: paragraphs, headings dropped, @-@ escapes undone."""
    articles = []
    for file in ("wiki.valid.tokens", "wiki.test.tokens"):
        for line in (source_dir / "wikitext-2" / file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if re.fullmatch(r"= [^=].* =", line):
                articles.append([])
            elif line and not line.startswith("="):
                articles[-1].append(re.sub(r" @(.)@ ", r"\1", line))
    return [article for article in articles if article]


def gutenberg_blocks(source_dir: Path) -> list[list[str]]:
    """Blocks of consecutive paragraphs of each book; the authors task's valid/test passages left out."""
    lines = _lines(source_dir, "gutenberg", "gutenberg.txt")
    blocks = []
    for book in _docs(source_dir, "gutenberg"):
        start = int(book["first_line"]) - 1
        paragraphs = lines[start : start + int(book["lines"])]
        if book["doc"].split("-")[0] in AUTHORS:
            # prepare.split_authors cuts the 10-150-word paragraphs at 80%; drop from that one on.
            eligible = [i for i, p in enumerate(paragraphs) if 10 <= len(p.split()) <= 150]
            paragraphs = paragraphs[: eligible[int(len(eligible) * AUTHORS_TRAIN_SHARE)]]
        blocks += [paragraphs[i : i + BOOK_BLOCK_LINES] for i in range(0, len(paragraphs), BOOK_BLOCK_LINES)]
    return blocks


def reviews(source_dir: Path) -> list[list[str]]:
    """Pang & Lee's reviews of folds cv000-cv799, one document each."""
    lines = _lines(source_dir, "review_polarity_v2", "review_polarity.txt")
    with open(source_dir / "review_polarity_v2" / "review_polarity.docs.tsv", encoding="utf-8") as f:
        docs = list(csv.DictReader(f, delimiter="\t"))
    return [
        [lines[int(doc["first_line"]) - 1]]
        for doc in docs
        if int(doc["doc"].split("/")[1][2:5]) < FIRST_HELD_OUT_FOLD
    ]


def speeches(source_dir: Path, name: str) -> list[list[str]]:
    lines = _lines(source_dir, name, f"{name}.txt")
    return [
        lines[int(doc["first_line"]) - 1 : int(doc["first_line"]) - 1 + int(doc["lines"])]
        for doc in _docs(source_dir, name)
    ]


def build(source_dir: Path, out_dir: Path) -> dict:
    sources = {
        "wikitext-2 (valid + test)": wikitext_articles(source_dir),
        "gutenberg": gutenberg_blocks(source_dir),
        "review_polarity_v2 (cv000-cv799)": reviews(source_dir),
        "state_union": speeches(source_dir, "state_union"),
        "inaugural": speeches(source_dir, "inaugural"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "valid": []}
    counts = {}
    for name, documents in sources.items():
        counts[name] = {"documents": len(documents)}
        for index, document in enumerate(documents):
            split = "valid" if index % HELD_OUT_EVERY == HELD_OUT_EVERY // 2 else "train"
            paragraphs = [p for p in document if p.strip()]
            splits[split] += paragraphs
            counts[name][f"{split}_words"] = counts[name].get(f"{split}_words", 0) + sum(len(p.split()) for p in paragraphs)
    manifest = {"sources": counts, "files": {}}
    for split, paragraphs in splits.items():
        data = ("\n".join(paragraphs) + "\n").encode("utf-8")
        (out_dir / f"{split}.txt").write_bytes(data)
        manifest["files"][f"{split}.txt"] = {
            "paragraphs": len(paragraphs),
            "words": sum(len(p.split()) for p in paragraphs),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
