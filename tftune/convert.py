"""Converts a run directory of run format 1 to format 2, once: its model becomes a keras-hub preset.

Format 1 kept the weights only (`encoder.weights.h5`, `language_model.weights.h5` or
`classifier.weights.h5`, and `vocab.txt`); the architecture was worked out again from
`recipe.toml` on every load. Format 2 holds the preset files (`tftune.models.preset_files`), so
a run describes its own model. The conversion rebuilds the model from the recipe one last time,
loads the old weights (nothing is retrained) and writes the preset files; weights stored as
float16 (the shipped models) stay float16. The other files (`run.json`, the recipe, history,
metrics, labels, model card, export, logs) are kept as they are, `run.json` with its new format.

The input is never changed: the converted run is written to a new directory, `out`, which may not
be the run, lie inside it or hold it (`tftune.output_paths.check_convert_paths`), `force` or not.

Example:

```python
convert_run("runs/old-lm", "runs/old-lm-v2")
```

From the command line: `tftune convert RUN --out NEW_DIR` (`--force` to replace an earlier run there).
A format-1 run given to any other command is refused in one line that says so.
"""

import logging
import shutil
import tempfile
from pathlib import Path

from tftune.errors import RunError
from tftune.output_paths import check_convert_paths
from tftune.runs import RUN_INFO, FinetuneRun, PretrainRun, Run, RunDirectory, RunFile, read_json, write_json

logger = logging.getLogger("tftune")


class Format1PretrainRun(PretrainRun):
    """A pretrain run as format 1 wrote it."""

    format_version = 1
    vocab_file = RunFile("vocab.txt")
    encoder_weights = RunFile("encoder.weights.h5")
    language_model_weights = RunFile("language_model.weights.h5")
    model_files = ("vocab_file", "encoder_weights", "language_model_weights")
    required = ("recipe_file", "vocab_file", "metrics_file", "encoder_weights", "language_model_weights")


class Format1FinetuneRun(FinetuneRun):
    """A finetune run as format 1 wrote it."""

    format_version = 1
    vocab_file = RunFile("vocab.txt")
    classifier_weights = RunFile("classifier.weights.h5")
    classifier_config = RunFile("classifier.json")  # absent in runs written before it was kept
    model_files = ("vocab_file", "classifier_weights", "classifier_config")
    required = ("recipe_file", "vocab_file", "metrics_file", "labels_file", "classifier_weights")


_FORMAT_1 = {run.kind: run for run in (Format1PretrainRun, Format1FinetuneRun)}


def open_format1(run_dir):
    """The format-1 run at `run_dir`; a run already converted, or no run, is a one-line `RunError`."""
    kind = Run.kind_at(run_dir)
    if kind not in _FORMAT_1:
        raise RunError(f"{run_dir}: not a tftune pretrain or finetune run (no readable {RUN_INFO})")
    version = read_json(Path(run_dir) / RUN_INFO).get("format", 1)
    if version != 1:
        raise RunError(f"{run_dir}: already in run format {version}; nothing to convert")
    return _FORMAT_1[kind].open(run_dir)


# === The model, rebuilt from format 1 ===


def _preprocessor(run, max_len=None):
    from tftune.models import TextPreprocessor

    return TextPreprocessor(run.vocab, lowercase=run.tokenizer.lowercase, max_len=max_len)


def _language_model(run):
    from tftune.keras_private import load_weights_skipping
    from tftune.model_configs import backbone_config, language_model_config
    from tftune.models import LanguageModel, TextBackbone

    recipe = run.recipe
    backbone = TextBackbone(**backbone_config(recipe.encoder, len(run.vocab), run.embedding_dim))
    backbone.load_weights(run.encoder_weights)
    model = LanguageModel(backbone, **language_model_config(recipe), preprocessor=_preprocessor(run))
    # The file keeps the backbone under its old attribute name (`encoder`); it loaded above.
    load_weights_skipping(model, run.language_model_weights, skip=[backbone])
    return model


def _classifier(run):
    import keras

    from tftune.model_configs import backbone_config, classifier_config
    from tftune.models import ClassifierEnsemble, TextBackbone, TextClassifier

    recipe = run.recipe
    if run.classifier_config.is_file():
        model = keras.saving.deserialize_keras_object(read_json(run.classifier_config))
    else:  # runs written before the config was kept: one classifier per member, from the recipe
        backbone = backbone_config(recipe.encoder, len(run.vocab), run.embedding_dim, recipe.finetune.dropout_scale)
        members = run.info.get("members") or [{"name": "classifier", "direction": "forward"}]
        classifiers = [
            TextClassifier(TextBackbone(**backbone), **{**classifier_config(recipe, recipe, len(run.labels()),
                                                                            member["name"]),
                                                        "direction": member["direction"]})
            for member in members
        ]
        model = classifiers[0] if len(classifiers) == 1 else ClassifierEnsemble(classifiers)
    model.load_weights(run.classifier_weights)
    model.preprocessor = _preprocessor(run, recipe.finetune.max_len)
    return model


def _stored_as_float16(path):
    import h5py
    import numpy as np

    found = []
    with h5py.File(path, "r") as weights:
        weights.visititems(lambda name, item: found.append(item.dtype) if isinstance(item, h5py.Dataset) else None)
    return any(dtype == np.float16 for dtype in found)


# === Writing format 2 ===


def _copy_run_files(run, staging):
    """Copies every file and folder of `run` but its format-1 model files into `staging`."""
    skipped = {getattr(run, role).name for role in run.model_files}
    for item in sorted(run.path.iterdir()):
        if item.name in skipped or item.name == RUN_INFO:
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name, symlinks=True)
        else:
            shutil.copy2(item, staging / item.name)


def _halve_weights(run, staging, new_run):
    """Stores the new weight files as float16 when the old ones were (the shipped models are)."""
    from tftune.pretrained_models import copy_as_float16

    old = run.encoder_weights if isinstance(run, Format1PretrainRun) else run.classifier_weights
    if not _stored_as_float16(old):
        return
    for path in (new_run.backbone_weights, new_run.task_weights):
        with tempfile.TemporaryDirectory(dir=staging) as scratch:
            full = Path(scratch) / path.name
            shutil.move(path, full)
            copy_as_float16(full, path)


def convert_run(run_dir, out, force=False):
    """Writes the format-2 run of the format-1 run at `run_dir` to `out`; returns `out`.

    Args:
        run_dir: a pretrain or finetune run of run format 1 (a shipped model's folder included);
            never changed.
        out: the new run directory (must not exist, or be empty); never `run_dir`, a folder inside
            it or one that holds it.
        force: replace an earlier run at `out`.

    Example:

    >>> convert_run("runs/old-lm", "runs/old-lm-v2")  # doctest: +SKIP
    PosixPath('runs/old-lm-v2')
    """
    out = Path(out)
    check_convert_paths(run_dir, out)
    run = open_format1(run_dir)
    model = _language_model(run) if isinstance(run, Format1PretrainRun) else _classifier(run)
    new_class = PretrainRun if isinstance(run, Format1PretrainRun) else FinetuneRun
    with RunDirectory(out, force=force, run_class=new_class) as new_run:
        _copy_run_files(run, new_run.path)
        write_json(new_run.info_file, {**run.info, "format": new_class.format_version})
        new_run.save_model(model)
        _halve_weights(run, new_run.path, new_run)
    new_run = new_class.open(out)
    new_run.vocab  # the converted vocabulary is the one the weights were trained with
    logger.info("converted %s to run format %d: %s", run_dir, new_class.format_version, out)
    return out
