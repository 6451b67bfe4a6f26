# %% [markdown]
# # tftune from Python: a classifier from a shipped language model in a few lines
#
# Fine-tune the shipped general language model (`lstm-glove-general`, a 2 x 256 LSTM on frozen
# GloVe vectors) as a classifier of who wrote a passage, with ULMFiT's gradual unfreezing, then
# classify new text and keep the model as a `.keras` file. Run it as a script
# (`python examples/quickstart.py`) or cell by cell in an editor that reads `# %%` cells.
#
# The labeled passages ship with tftune (`pretrained/authors/`); any list of texts and labels,
# or a pandas DataFrame with `text` and `label` columns, works the same way.

# %%
import csv
import logging
import sys
import tempfile
from pathlib import Path

import tftune
from tftune.recipe import PRETRAINED_DIR

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # tftune's progress lines
DATA = PRETRAINED_DIR / "authors"  # the shipped data, in the checkout or the installed package
WORK = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tftune-quickstart-"))


def read(split, limit):
    with open(DATA / f"{split}.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))[:limit]
    return [row["text"] for row in rows], [row["label"] for row in rows]


train_texts, train_labels = read("train", 400)
valid = read("valid", 200)
print(f"{len(train_texts)} training passages by {len(set(train_labels))} authors")

# %% [markdown]
# ## Fine-tune
#
# `finetune` takes the texts and labels as they are, trains the head first and then unfreezes
# one recurrent layer per stage, keeps the weights of the best validation epoch and exports a
# SavedModel that reads raw strings. `settings` overrides the model's recipe: here the shortest
# schedule (one epoch per stage) and short passages keep the example quick; the shipped recipe
# trains up to 20 epochs.

# %%
classifier = tftune.finetune(
    "lstm-glove-general",
    (train_texts, train_labels),
    valid=valid,
    out=WORK / "authors",
    settings={"finetune.epochs": 2, "finetune.max_len": 60},
)
print(f"validation accuracy {classifier.metrics['valid']['accuracy']:.3f}")
classifier.model.summary(print_fn=lambda line, **_: None)  # a Keras model: summary, fit, save, ...

# %% [markdown]
# ## Classify new text
#
# `predict` runs the exported SavedModel: raw strings in, class names and probabilities out.

# %%
labels, probabilities = tftune.predict(
    WORK / "authors",
    ["The whale rose beside the ship and the harpooneers stood ready.",
     "She could not think of the ball without a blush, nor of Mr. Knightley without a smile."],
)
print(labels, probabilities.max(axis=1).round(3))

# %% [markdown]
# ## Keep the Keras model
#
# `load` rebuilds the trained classifier from its config (`TextClassifier.from_config`) and its
# weights, with its preprocessor: it takes raw strings, and `predict` returns the probabilities
# of the classes (in the order of the run's `labels.json`). It saves to a single `.keras` file
# like any Keras model; `keras.saving.load_model` reads it back after `import tftune`.

# %%
model = tftune.load(WORK / "authors")
print(model.predict(["Call me Ishmael."], verbose=0).round(3))
model.save(WORK / "authors.keras")
print(f"{type(model).__name__} saved to {WORK / 'authors.keras'}")
