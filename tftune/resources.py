"""What a recipe will cost before anything is built: its parameters and its peak training memory.

The estimate is arithmetic on the recipe's settings alone (no TensorFlow), so that a recipe that
cannot fit is refused in one line at once, instead of after the model is built or halfway through
its first step. It counts, in float32:

- the frozen embedding: vocabulary rows x vector size;
- each recurrent layer's kernels and biases (gates x (inputs + units + biases) x units), plus Adam's two
  moments and a gradient for everything that trains;
- the language model's head (top units x vocabulary for `full`/`sampled`, units x vector size for
  the tied heads) and its full-softmax logits on a validation batch (batch x seq_len x vocabulary);
- the activations kept for backpropagation: batch x steps x (the vectors + every layer's gates).

It is an order-of-magnitude estimate (TensorFlow's workspace and fused kernels are not counted),
meant to catch settings that are off by orders of magnitude, such as a 20,000-unit stack.

Example:

>>> from tftune.recipe import load_recipe
>>> cost = estimate_training_memory(load_recipe("gru-glove"), "pretrain", embedding_dim=50)
>>> cost.parameters > 1_000_000, cost.bytes < 2**31
(True, True)
"""

import dataclasses
import os
import re

from tftune.errors import RecipeError

FLOAT_BYTES = 4
# Weight, gradient and Adam's two moments of every trained parameter.
TRAINED_COPIES = 4
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
# Vector size assumed when the vectors file cannot tell (the largest common one).
DEFAULT_EMBEDDING_DIM = 300
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """The estimated size of one training run.

    Attributes:
        parameters: weights of the model (frozen embedding included).
        bytes: peak memory of training, in bytes.
        largest: the setting-driven term that dominates, e.g. "recurrent layers (encoder.units)".
    """

    parameters: int
    bytes: int
    largest: str


def _recurrent_parameters(cell, layers, units, embedding_dim):
    gates = GATES[cell]
    biases = 2 if cell == "gru" else 1  # Keras' GRU with reset_after has an input and a recurrent bias
    total = 0
    for layer in range(layers):
        inputs = embedding_dim if layer == 0 else units
        total += gates * (inputs + units + biases) * units
    return total


def estimate_training_memory(recipe, kind, vocabulary_size=None, embedding_dim=None):
    """Parameters and peak memory of pretraining (`kind="pretrain"`) or fine-tuning (`"finetune"`).

    Args:
        recipe: the resolved `Recipe`.
        kind: "pretrain" or "finetune".
        vocabulary_size: rows of the vocabulary if known (a pretrain run's); else `vocab.max_size`.
        embedding_dim: the vectors' size if known; else `DEFAULT_EMBEDDING_DIM`.

    Returns:
        A `MemoryEstimate`.
    """
    encoder = recipe.encoder
    vocab = vocabulary_size or recipe.vocab.max_size
    dim = embedding_dim or DEFAULT_EMBEDDING_DIM
    gates = GATES[encoder.cell]
    embedding = vocab * dim
    recurrent = _recurrent_parameters(encoder.cell, encoder.layers, encoder.units, dim)
    if kind == "pretrain":
        settings = recipe.pretrain
        tied = settings.output.startswith("tied")
        head = encoder.units * dim + dim if tied else (encoder.units + 1) * vocab
        batch, steps = settings.batch_size, settings.seq_len
        logits = batch * steps * vocab * 2  # full-softmax logits and their softmax on a validation batch
    else:
        settings = recipe.finetune
        pooled = (encoder.units + (dim if settings.pool_embeddings else 0)) * (3 if settings.head == "concat_pool" else 1)
        head = (pooled + 1) * settings.head_units
        batch, steps = settings.batch_size, settings.max_len
        logits = 0
    activations = batch * steps * (dim + encoder.layers * encoder.units * (gates + 1))
    terms = {
        "embedding (vocab.max_size x vector size)": embedding,
        "recurrent layers (encoder.units, encoder.layers)": TRAINED_COPIES * recurrent,
        f"head ({'finetune.head_units' if kind == 'finetune' else 'encoder.units x vocabulary'})": TRAINED_COPIES * head,
        f"activations ({kind}.batch_size x {'finetune.max_len' if kind == 'finetune' else 'pretrain.seq_len'})":
            activations,
        "validation logits (pretrain.batch_size x pretrain.seq_len x vocabulary)": logits,
    }
    return MemoryEstimate(
        parameters=embedding + recurrent + head,
        bytes=FLOAT_BYTES * sum(terms.values()),
        largest=max(terms, key=terms.get),
    )


def machine_memory():
    """Bytes of memory this process may use: the physical memory, or a smaller cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as limit:
            text = limit.read().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total


def parse_size(text):
    """Bytes of a size such as `8G`, `512MB`, `1.5g` or `1000000` (powers of 1024).

    >>> parse_size("2G"), parse_size("512m")
    (2147483648, 536870912)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if match is None or float(match[1]) <= 0:
        raise RecipeError(f"--max-memory {text!r}: expected a size such as 8G, 512M or 2000000000 (bytes)")
    return int(float(match[1]) * _UNITS[match[2]])


def format_size(size):
    """`size` bytes as a short text, e.g. '6.1 GB' (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"


def check_fits(recipe, kind, limit=None, vocabulary_size=None, embedding_dim=None):
    """Refuses, in one line with the estimate, a run that cannot fit in `limit` bytes (default: the machine's).

    Raises:
        RecipeError: the estimated peak memory is above the limit.
    """
    cost = estimate_training_memory(recipe, kind, vocabulary_size, embedding_dim)
    bound = limit if limit is not None else machine_memory()
    if cost.bytes > bound:
        where = "--max-memory" if limit is not None else "this machine's memory"
        raise RecipeError(
            f"this recipe needs about {format_size(cost.bytes)} to {kind} ({cost.parameters:,} parameters; most of it "
            f"for the {cost.largest}), more than {where} ({format_size(bound)}); lower those settings"
        )
    return cost
