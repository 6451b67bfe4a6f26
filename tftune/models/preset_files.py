"""Presets in keras-hub's layout: a folder that describes its model, read with the model classes alone.

A preset folder holds:

- `config.json`: the backbone's class and config (`keras.saving.serialize_keras_object`);
- `task.json`: the task's class and config, its backbone's and preprocessor's included;
- `preprocessor.json` and `assets/tokenizer/vocabulary.txt`: the preprocessor and its vocabulary;
- `model.weights.h5`: the backbone's weights; `task.weights.h5`: the task's other weights;
- `metadata.json`: the tftune and Keras versions, the date, the parameter count.

`save_to_preset` writes them and `from_preset` (`TextBackbone`, `LanguageModel`,
`TextClassifier`, or `load_task` for any task) reads only them: no recipe, no run-directory code.
A tftune run directory holds the same files beside its own (`run.json`, `recipe.toml`, ...), so a
run is a preset too. A preset is named by its path, or by the name of a shipped one (`pretrained/`).

Example:

```python
save_to_preset(classifier, "presets/trec")
classifier = load_task("presets/trec")               # the same model, weights loaded
backbone = TextBackbone.from_preset("lstm-glove-general")
```
"""

import datetime
import importlib.metadata
import json
import logging
from pathlib import Path

import keras

from tftune import keras_private
from tftune.errors import RunError
from tftune.models import (
    BACKBONE_CONFIG_FILE,
    BACKBONE_WEIGHTS_FILE,
    METADATA_FILE,
    PREPROCESSOR_CONFIG_FILE,
    TASK_CONFIG_FILE,
    TASK_WEIGHTS_FILE,
    TOKENIZER_ASSETS_DIR,
)
from tftune.shipped import PRETRAINED_DIR

logger = logging.getLogger("tftune")

# The version of the preset layout, in `metadata.json`.
PRESET_FORMAT = 1


# === Finding a preset ===


def preset_folder(preset):
    """The folder of `preset`: a path to a preset folder, or the name of a shipped preset.

    Raises:
        RunError: in one line, when it is neither, or is a run written before runs held presets.
    """
    path = Path(preset)
    if not path.exists() and "/" not in str(preset) and (PRETRAINED_DIR / str(preset)).is_dir():
        path = PRETRAINED_DIR / str(preset)
    if (path / BACKBONE_CONFIG_FILE).is_file():
        return path
    if (path / "run.json").is_file():
        raise RunError(f"{path}: a run in tftune's run format 1, which holds no preset; convert it once with "
                       f"`tftune convert {path} --out NEW_DIR`")
    if path.is_dir():
        raise RunError(f"{path}: not a preset (no {BACKBONE_CONFIG_FILE})")
    raise RunError(f"{preset}: no such preset folder, nor a shipped preset of that name")


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing; not a complete preset") from None
    except (ValueError, OSError) as e:
        raise RunError(f"{path}: unreadable, is it truncated or damaged? ({e})") from None


def _registered_class(config, path):
    import tftune

    tftune.register_keras_objects()  # a preset names any of tftune's classes, imported or not yet
    cls = keras.saving.get_registered_object(config.get("registered_name", ""))
    if cls is None:
        raise RunError(f"{path}: names the class {config.get('registered_name')!r}, which is not a tftune model")
    return cls


def task_class(preset):
    """The class of the task a preset holds (e.g. `LanguageModel`), or None for a backbone alone."""
    path = preset_folder(preset) / TASK_CONFIG_FILE
    return _registered_class(_read_json(path), path) if path.is_file() else None


def task_config(preset):
    """The config (`get_config`) of the task a preset holds."""
    return _read_json(preset_folder(preset) / TASK_CONFIG_FILE)["config"]


# === Loading ===


# What h5py and Keras raise on a truncated or overwritten weights file, or one of another model.
_UNREADABLE = (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError)


def _load_weights(model, path, skip=()):
    if not path.is_file():
        raise RunError(f"{path}: missing; not a complete preset")
    try:
        keras_private.load_weights_skipping(model, path, skip)
    except _UNREADABLE as e:
        reason = " ".join(str(e).split())[:160]
        raise RunError(f"{path}: cannot be loaded into {model.name}; is it truncated or damaged, or another "
                       f"model's? ({type(e).__name__}: {reason})") from None


def load_backbone(preset, **config):
    """The preset's `TextBackbone`, its weights loaded; `config` changes entries (dropout rates, `use_cudnn`)."""
    folder = preset_folder(preset)
    saved = _read_json(folder / BACKBONE_CONFIG_FILE)
    backbone = _registered_class(saved, folder / BACKBONE_CONFIG_FILE).from_config({**saved["config"], **config})
    _load_weights(backbone, folder / BACKBONE_WEIGHTS_FILE)
    return backbone


def load_preprocessor(preset, **config):
    """The preset's `TextPreprocessor` with its vocabulary, or None when it has none; `config` changes
    entries (`max_len`)."""
    folder = preset_folder(preset)
    if not (folder / PREPROCESSOR_CONFIG_FILE).is_file():
        return None
    saved = _read_json(folder / PREPROCESSOR_CONFIG_FILE)
    preprocessor = _registered_class(saved, folder / PREPROCESSOR_CONFIG_FILE).from_config(
        {**saved["config"], **config})
    preprocessor.load_assets(folder / TOKENIZER_ASSETS_DIR)
    return preprocessor


def load_task(preset, expected=None, **backbone_config):
    """The task a preset holds, its weights loaded, with its preprocessor (so it takes text).

    Args:
        preset: a preset folder or a shipped preset's name.
        expected: a task class the preset must hold (e.g. `LanguageModel`); None takes any.
        **backbone_config: backbone config entries to change (dropout rates, `use_cudnn`); only
            for tasks over one backbone (not ensembles).
    """
    folder = preset_folder(preset)
    cls = task_class(folder)
    if cls is None or (expected is not None and not issubclass(cls, expected)):
        held = cls.__name__ if cls is not None else "a backbone alone"
        raise RunError(f"{folder}: holds {held}, not a {expected.__name__ if expected else 'task'}")
    config = {**task_config(folder), "preprocessor": load_preprocessor(folder)}
    if "backbone" in config:
        config["backbone"] = load_backbone(folder, **backbone_config)
        task = cls.from_config(config)
    else:  # an ensemble: each member rebuilds its backbone from the task's config
        if backbone_config:
            raise ValueError(f"{cls.__name__} has several backbones: their config cannot be changed here")
        task = cls.from_config(config)
        _load_weights(task.backbone, folder / BACKBONE_WEIGHTS_FILE)
    _load_weights(task, folder / TASK_WEIGHTS_FILE, skip=[task.backbone])
    return task


# === Saving ===


def _write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_to_preset(model, preset_dir):
    """Writes `model` (a task, or a `TextBackbone` alone) to `preset_dir` in keras-hub's preset layout.

    The folder is created if needed; files of an earlier preset there are replaced.

    Args:
        model: a `LanguageModel`, `TextClassifier`, `ClassifierEnsemble` or `TextBackbone`.
        preset_dir: the folder to write.

    Example:

    ```python
    save_to_preset(classifier, "presets/trec")
    TextClassifier.from_preset("presets/trec", num_classes=6)  # the trained classifier
    ```
    """
    folder = Path(preset_dir)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = getattr(model, "backbone", model)
    _write_json(folder / BACKBONE_CONFIG_FILE, keras.saving.serialize_keras_object(backbone))
    backbone.save_weights(folder / BACKBONE_WEIGHTS_FILE)
    if model is not backbone:
        _write_json(folder / TASK_CONFIG_FILE, keras.saving.serialize_keras_object(model))
        keras_private.save_weights_skipping(model, folder / TASK_WEIGHTS_FILE, skip=[backbone])
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None:
        _write_json(folder / PREPROCESSOR_CONFIG_FILE, keras.saving.serialize_keras_object(preprocessor))
        (folder / TOKENIZER_ASSETS_DIR).mkdir(parents=True, exist_ok=True)
        preprocessor.save_assets(folder / TOKENIZER_ASSETS_DIR)
    _write_json(folder / METADATA_FILE, {
        "preset_format": PRESET_FORMAT,
        "tftune_version": importlib.metadata.version("tftune"),
        "keras_version": keras.__version__,
        "date_saved": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d@%H:%M:%S"),
        "class_name": type(model).__name__,
        "parameter_count": model.count_params(),
    })
    logger.debug("saved %s to the preset %s", model.name, folder)
    return folder
