"""The recipe schema: one table (`SCHEMA`) declaring each key's type, default, allowed values and help.

It drives validation, defaults and `--set` overrides (`tftune.recipe`), the typed sections of a
`Recipe` (`SECTIONS`: `recipe.encoder.units` is an int) and the docs printed by
`tftune.recipe.describe_schema()`. The lists of choices come from the modules that own them,
imported without loading TensorFlow or gensim.

Example:

>>> from tftune.recipe_schema import SCHEMA
>>> SCHEMA["encoder"]["cell"].kind
'choice'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from tftune import embeddings, models
from tftune.distribute import STRATEGIES


class Sentinel:
    def __init__(self, label: str):
        self.label = label

    def __repr__(self) -> str:
        return self.label


REQUIRED = Sentinel("required")
FILE_NAME = Sentinel("file name")  # the recipe's file name without ".toml"

STRING_KINDS = ("str", "name", "text", "choice", "path")


@dataclasses.dataclass(frozen=True)
class Field:
    """Declaration of one recipe key.

    Attributes:
        kind: "str" (non-empty), "name" (a one-line name), "text" (any string), "int",
            "float", "bool", "choice" or "path".
        help: One line shown in the docs.
        default: Value used when the key is left out; `REQUIRED` if it must be given.
        choices: Allowed values of a "choice" key.
        low: Smallest allowed number, or None.
        high: Largest allowed number, or None.
        low_open: Whether `low` itself is excluded.
        high_open: Whether `high` itself is excluded.
    """

    kind: str
    help: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_label(self) -> str:
        """Short type for the docs, e.g. `int 1..8` or `float [0, 1)`."""
        if self.kind in ("int", "float"):
            return f"{self.kind} {self._range_label()}".strip()
        return {
            "name": "str",
            "text": "str",
        }.get(self.kind, self.kind)

    def expected(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.kind == "int":
            return f"an int {self._range_label()}".strip()
        if self.kind == "float":
            return f"a number {self._range_label()}".strip()
        if self.kind == "choice":
            return "one of " + ", ".join(toml_value(choice) for choice in self.choices)
        return {
            "str": "a non-empty string",
            "name": "a non-empty one-line name without / \\ or ..",
            "text": "a string",
            "bool": "true or false",
            "path": "a non-empty path string",
        }[self.kind]

    def _range_label(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.low is not None and self.high is not None:
            if self.kind == "int":
                return f"in {low}..{high}"
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return ""

    def check(self, value: Any) -> Any:
        """Returns `value` in canonical form, or raises ValueError if invalid."""
        if self.kind in STRING_KINDS:
            ok = isinstance(value, str) and (value != "" or self.kind == "text")
            if self.kind == "name":  # it names the default run folder, runs/NAME-pretrain
                ok = ok and value.isprintable() and not any(part in value for part in ("/", "\\", ".."))
            if self.kind == "choice":
                ok = ok and value in self.choices
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and self._in_range(value)
        elif self.kind == "float":
            # An int is fine where a float is expected ("epochs = 1" vs "lr = 1").
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and self._in_range(value))
            value = float(value) if ok else value
        else:
            raise AssertionError(f"unknown field kind {self.kind!r}")
        if not ok:
            raise ValueError(self.expected())
        return value

    def _in_range(self, number: float) -> bool:
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            return False
        return True


def _choice(help: str, choices: tuple[str, ...], default: Any = REQUIRED) -> Field:
    return Field("choice", help, default, choices=choices)


TOP_LEVEL: dict[str, Field] = {
    "name": Field("name", "Short name of the recipe, the default run folder's (no / or ..).", FILE_NAME),
    "description": Field("text", "One line saying what the recipe is for.", ""),
}

SCHEMA: dict[str, dict[str, Field]] = {
    "embeddings": {
        "path": Field("path", "Word vectors file; the vectors stay frozen during training."),
        "format": _choice("How the vectors file is stored (keyedvectors = gensim KeyedVectors.save; npy = a manifest naming a words file and a .npy matrix).",
                          embeddings.FORMATS),
        "lowercase": Field("bool", "Lowercase text before tokenizing (GloVe vectors are lowercase, GoogleNews word2vec ones cased).",
                           True),
        "oov": _choice("Vector of vocabulary words missing from the file: random (normal, per-dimension "
                       "std of the vectors), zeros, or the mean vector.",
                       embeddings.OOV_TREATMENTS, "random"),
    },
    "vocab": {
        "max_size": Field("int", "Most words kept in the vocabulary, most frequent first.", 20000, low=10,
                          high=5_000_000),
        "min_freq": Field("int", "Fewest occurrences in the pretraining corpus for a word to be kept.", 2, low=1),
        "open": Field("bool", "Open vocabulary: words of new text (finetune's training data, pretrain --from's corpus) "
                              "that have a vector but no row join the vocabulary with their frozen vectors.", True),
    },
    "encoder": {
        "cell": _choice("Recurrent cell of every layer.", models.CELLS),
        "layers": Field("int", "Number of stacked recurrent layers.", 2, low=1, high=8),
        "units": Field("int", "Units (state size) of each recurrent layer.", 256, low=1, high=16384),
        "dropout": Field("float", "Dropout rate between layers (0 = none).", 0.2, low=0, high=1, high_open=True),
        "weight_dropout": Field("float", "AWD-LSTM weight drop: DropConnect rate on every recurrent layer's "
                                "hidden-to-hidden weights, one mask per batch (keeps the fast CPU kernels and "
                                "cuDNN); 0 = none.", 0.0, low=0, high=1, high_open=True),
        "embedding_dropout": Field("float", "Word dropout: share of the vocabulary whose vectors are zeroed for a "
                                   "whole batch (the vectors stay frozen); 0 = none.", 0.0,
                                   low=0, high=1, high_open=True),
        "input_dropout": Field("float", "Locked (variational) dropout on the word vectors entering the recurrent "
                               "stack: one mask per sequence, the same at every step; 0 = none.", 0.0,
                               low=0, high=1, high_open=True),
        "hidden_dropout": Field("float", "Locked dropout between recurrent layers; 0 = none.", 0.0,
                                low=0, high=1, high_open=True),
        "output_dropout": Field("float", "Locked dropout on the top layer's outputs, before the language-model "
                                "head or the classifier's pooling; 0 = none.", 0.0, low=0, high=1, high_open=True),
    },
    "pretrain": {
        "valid_fraction": Field("float", "Share of corpus documents held out to measure perplexity when no --valid "
                                "text is given.", 0.05,
                                low=0, high=0.5, low_open=True, high_open=True),
        "seq_len": Field("int", "Tokens per training sequence (backpropagation through time).", 70, low=2,
                         high=10000),
        "batch_size": Field("int", "Sequences per batch.", 64, low=1, high=65536),
        "epochs": Field("int", "Passes over the corpus; 0 = no training (a vocabulary and an untrained encoder).", low=0),
        "learning_rate": Field("float", "Adam learning rate (gradients clipped to global norm 1).", 0.01, low=0, low_open=True),
        "output": _choice("Language-model output: full = softmax over the whole vocabulary; sampled = the same "
                          "head trained on a sampled softmax of num_sampled words (validation always uses the "
                          "full softmax); tied = project to the embedding size and score against the frozen "
                          "word vectors; tied_sampled = the tied head trained on the sampled softmax, whose "
                          "step cost stays flat as the vocabulary grows.", models.OUTPUTS, "sampled"),
        "num_sampled": Field("int", 'Words sampled per training step when output = "sampled" or "tied_sampled" '
                             "(log-uniform over the frequency-sorted vocabulary).", 1024, low=1, high=1_000_000),
        "ar": Field("float", "Activation regularization (AWD-LSTM's alpha): adds ar * the mean squared top-layer "
                    "output (after output_dropout) to the training loss, not to the reported loss; 0 = none.",
                    0.0, low=0),
        "tar": Field("float", "Temporal activation regularization (AWD-LSTM's beta): adds tar * the mean squared "
                     "change of the top-layer output from one step to the next (before output_dropout) to the "
                     "training loss, not to the reported loss; 0 = none.", 0.0, low=0),
        "checkpoint_every": Field("int", "Also write the resumable checkpoint every this many steps (it is always "
                                  "written after every epoch); 0 = epochs only.", 0, low=0),
        "direction": _choice("forward = predict the next word; backward = read the corpus right to left and "
                             "predict the previous one (ULMFiT's second model: fine-tune both and pass both runs "
                             "to finetune --from for an ensemble).", models.DIRECTIONS, "forward"),
        "seed": Field("int", "Random seed of pretraining.", 0, low=0, high=2**32 - 1),
    },
    "finetune": {
        "valid_fraction": Field("float", "Share of the training examples held out for validation when no --valid "
                                "examples are given.", 0.1,
                                low=0, high=0.5, low_open=True, high_open=True),
        "max_len": Field("int", "Tokens kept per document; longer documents are cut.", 400, low=1, high=100_000),
        "batch_size": Field("int", "Documents per batch.", 32, low=1, high=65536),
        "head": _choice("Classifier input: concat_pool = last state, max-pool and mean-pool of the top layer; "
                        "last = last state only.", models.HEADS, "concat_pool"),
        "pool_embeddings": Field("bool", "Pool the frozen word vectors beside the top layer (like ELMo's "
                                 "layer 0), so the head sees lexical features from the first step.", True),
        "head_units": Field("int", "Units of the hidden dense layer of the classifier head.", 50, low=1, high=65536),
        "head_dropout": Field("float", "Dropout rate in the classifier head.", 0.3, low=0, high=1, high_open=True),
        "dropout_scale": Field("float", "Multiplies each of the pretrain run's encoder dropout rates (dropout, "
                               "weight_dropout, embedding_dropout, input_dropout, hidden_dropout, output_dropout) "
                               "in the classifier, like fastai's drop_mult; each product must stay below 1.",
                               1.0, low=0),
        "unfreeze": _choice("gradual = train the head first, then one more layer per stage (ULMFiT); "
                            "all = train every layer from the start.", ("gradual", "all"), "gradual"),
        "stage_epochs": Field("int", "Epochs of each gradual-unfreezing stage before the last.", 1, low=1),
        "stage_lr_decay": Field("float", "Each gradual-unfreezing stage peaks at the previous stage's learning "
                                "rate divided by this (ULMFiT's fastai recipe lowers it as layers join); "
                                "1 = every stage peaks at learning_rate.", 1.0, low=1),
        "epochs": Field("int", "Epochs of fine-tuning in all (the last stage gets at least 1).", low=1),
        "learning_rate": Field("float", "Peak learning rate of the top layer and the head.", 0.004,
                               low=0, low_open=True),
        "lr_decay": Field("float", "Each lower layer learns this many times slower (discriminative rates).",
                          2.6, low=1),
        "schedule": _choice("Learning rate of each stage: stlr = slanted triangular (ULMFiT); one_cycle = cosine "
                            "one-cycle (fastai); constant = fixed rate.", ("stlr", "one_cycle", "constant"), "stlr"),
        "checkpoint_every": Field("int", "Also write the resumable checkpoint every this many steps (it is always "
                                  "written after every epoch); 0 = epochs only.", 0, low=0),
        "restore_best": Field("bool", "Keep the weights of the epoch with the best validation accuracy (across "
                              "all stages), not those of the last epoch.", True),
        "patience": Field("int", "Stop after this many epochs without a better validation accuracy; 0 = run "
                          "every epoch.", 0, low=0),
        "class_weight": _choice("none = every example counts the same; balanced = weight each class by "
                                "examples / (classes * its examples), for imbalanced data.",
                                ("none", "balanced"), "none"),
        "seed": Field("int", "Random seed of fine-tuning.", 0, low=0, high=2**32 - 1),
    },
    "precision": {
        "policy": _choice("Keras dtype policy; auto picks a mixed policy on hardware that gains from it, "
                          "else float32.", ("auto", "float32", "mixed_float16", "mixed_bfloat16"), "auto"),
    },
    "distribute": {
        "strategy": _choice("Data-parallel training: none = one device; mirrored = every local GPU (or "
                            "distribute.devices); multi-worker = one process per machine, each with its own "
                            "TF_CONFIG. batch_size is the global batch, split over the replicas; the learning "
                            "rate is not scaled.", STRATEGIES, "none"),
        "devices": Field("text", 'Comma-separated devices for mirrored, e.g. "/gpu:0,/gpu:1"; "" = every local '
                         "GPU, or the CPU when there is none.", ""),
    },
}


# === Typed sections ===

_PYTHON_TYPES = {"str": str, "name": str, "text": str, "choice": str, "path": str, "int": int, "float": float,
                 "bool": bool}


def _section_class(section: str, fields: Mapping[str, Field]) -> type:
    """A frozen dataclass with one typed attribute per key of a `SCHEMA` section, its help as docs."""
    lines = [f"The `[{section}]` section of a recipe (generated from `SCHEMA`).", "", "Attributes:"]
    lines += [f"    {key}: {field.help}" for key, field in fields.items()]
    return dataclasses.make_dataclass(
        "".join(part.title() for part in section.split("_")) + "Section",
        [(key, _PYTHON_TYPES[field.kind]) for key, field in fields.items()],
        frozen=True,
        namespace={"__doc__": "\n".join(lines), "__module__": __name__},
    )


SECTIONS: dict[str, type] = {section: _section_class(section, fields) for section, fields in SCHEMA.items()}
EmbeddingsSection = SECTIONS["embeddings"]
VocabSection = SECTIONS["vocab"]
EncoderSection = SECTIONS["encoder"]
PretrainSection = SECTIONS["pretrain"]
FinetuneSection = SECTIONS["finetune"]
PrecisionSection = SECTIONS["precision"]
DistributeSection = SECTIONS["distribute"]


def _number_text(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else repr(number)


# === Values as TOML writes them ===


def toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """TOML text of a str, int, float, bool or list of those; floats round-trip exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same double
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
