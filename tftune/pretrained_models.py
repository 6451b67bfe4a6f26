"""The registry of shipped pretrained language models ("presets"), found by name.

A shipped preset is an ordinary pretrain run kept in the shipped `pretrained/` folder, with a model
card (`README.md`) beside its files; as every run, it holds its model in keras-hub's preset layout
(`tftune.models.preset_files`). Wherever a command takes a pretrain run (`finetune --from`,
`pretrain --from`), it takes a preset's name too: an existing directory of that name wins, then
the preset.

Example:

```python
for preset in list_presets():
    print(preset.name, preset.perplexity)
run_dir = resolve_run("lstm-glove-general")  # .../pretrained/lstm-glove-general
```
"""

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from tftune.errors import RunError
from tftune.runs import RUN_INFO, PretrainRun, read_json, write_json
from tftune.shipped import PRETRAINED_DIR

MODEL_CARD = "README.md"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One shipped pretrained language model.

    Attributes:
        name: What `--from` takes.
        path: Its run directory.
        description: The recipe's description (the model and its corpus).
        size_bytes: The files' total size.
        train_tokens: Tokens of the training corpus (one epoch).
        perplexity: Held-out perplexity.
    """

    name: str
    path: Path
    description: str
    size_bytes: int
    train_tokens: int | None
    perplexity: float | None


def _open_preset(path: Path) -> PretrainRun | None:
    """The pretrain run at `path` when it is a preset (a run with a model card), else None."""
    if not (path / MODEL_CARD).is_file():
        return None
    try:
        return PretrainRun.open(path, require=())
    except RunError:
        return None


def _open_presets(directory: Path) -> list[PretrainRun]:
    if not directory.is_dir():
        return []
    return [run for run in map(_open_preset, sorted(directory.iterdir())) if run is not None]


def _read_preset(run: PretrainRun) -> Preset:
    path, metrics = run.path, run.metrics()
    return Preset(
        name=path.name,
        path=path,
        description=run.description,
        size_bytes=sum(file.stat().st_size for file in path.rglob("*") if file.is_file()),
        train_tokens=metrics.get("train_tokens"),
        perplexity=metrics.get("valid", {}).get("perplexity"),
    )


def list_presets(directory: str | os.PathLike | None = None) -> list[Preset]:
    """The shipped pretrained language models, by name.

    Args:
        directory: Where to look; default: the shipped `pretrained/` folder.
    """
    directory = Path(directory) if directory is not None else PRETRAINED_DIR
    return [_read_preset(run) for run in _open_presets(directory)]


def preset_names(directory: str | os.PathLike | None = None) -> list[str]:
    """The names of the shipped pretrained language models (see `list_presets`)."""
    directory = Path(directory) if directory is not None else PRETRAINED_DIR
    return [run.path.name for run in _open_presets(directory)]


def resolve_run(name_or_path: str | os.PathLike) -> Path:
    """A pretrain run's directory: the path itself when it exists, else the preset of that name.

    Args:
        name_or_path: A run directory, or a preset name (see `list_presets`).

    Raises:
        RunError: Neither a directory nor a preset.

    Example:

    ```python
    resolve_run("runs/my-lm")          # runs/my-lm
    resolve_run("lstm-glove-general")  # the shipped preset
    ```
    """
    path = Path(name_or_path)
    if path.exists() or os.sep in str(name_or_path) or "/" in str(name_or_path):
        return path
    preset = PRETRAINED_DIR / str(name_or_path)
    if (preset / MODEL_CARD).is_file():  # opening it says what is wrong with it, if anything
        return preset
    names = ", ".join(preset_names()) or "none shipped"
    raise RunError(f"{name_or_path}: no such run directory, nor a pretrained model of that name (pretrained: {names})")


# A folder of two pretrain runs, one per direction (`tftune.bidirectional`).
BIDIRECTIONAL_KIND = "bidirectional-pretrain"


def bidirectional_members(path):
    """`{direction: run directory}` of the bidirectional run at `path`, or None when it is none."""
    path = Path(path)
    if not (path / RUN_INFO).is_file():
        return None
    info = read_json(path / RUN_INFO)
    if not isinstance(info, dict) or info.get("kind") != BIDIRECTIONAL_KIND:
        return None
    return {direction: path / name for direction, name in info["members"].items()}


def resolve_runs(runs):
    """The pretrain runs behind `runs` (names or paths): a bidirectional run stands for its members."""
    expanded = []
    for run in runs:
        path = resolve_run(run)
        expanded.extend((bidirectional_members(path) or {None: path}).values())
    return expanded


# The recipe sections that say how to train (not what the model is): a preset takes them from the
# shipped recipe, so `pretrain --from PRESET` and `finetune` after it train as that recipe does.
_TRAINING_SECTIONS = ("pretrain", "finetune", "precision", "distribute")


def publish(
    run_dir: str | os.PathLike,
    destination: str | os.PathLike,
    continue_with: str | os.PathLike | None = None,
    description: str | None = None,
    overrides: Sequence[str] = (),
    partners: Mapping[str, str] | None = None,
) -> Path:
    """Copies a pretrain run into a preset folder: float16 weights, no optimizer state, relative paths.

    Keras loads float16 weights into its float32 variables, so the preset trains and serves as
    the run did, from a file half the size (the weights differ by float16 rounding, a relative
    1e-3). The recipe's paths become relative to the preset, so it works wherever the package
    is installed; files outside the preset's parent folder (the pretraining corpus, which does
    not ship) keep their names only. The model card (`README.md`) is written by hand beside it.

    The preset's recipe is what runs that continue from it start from (`pretrain --from NAME`,
    then `finetune` without `--recipe`): the run's `embeddings`, `vocab` and `encoder` sections
    (the model), and with `continue_with` the training sections (`pretrain`, `finetune`,
    `precision`, `distribute`) of that recipe, so the target-domain step and fine-tuning follow
    the shipped recipe rather than the long pretraining run. The model card records the
    command that trained the preset.

    Args:
        run_dir: A complete pretrain run.
        destination: The preset folder to create (its name is the preset's).
        continue_with: A recipe name or file whose training sections the preset's recipe takes;
            default: the run's own.
        description: The preset recipe's description (what `tftune pretrained list` shows);
            default: the run's.
        overrides: "section.key=value" settings applied last to the preset's recipe, e.g. a
            lower `pretrain.learning_rate` for the target-domain step.
        partners: the presets of the other direction, by direction, e.g.
            `{"backward": "lstm-glove-general-backward"}`: `pretrain --bidirectional` continues
            both (`tftune.bidirectional`). Recorded in the preset's `run.json`.

    Example:

    ```python
    publish("runs/lstm-glove-general", "pretrained/lstm-glove-general", continue_with="lstm-glove",
            description="2 x 256 LSTM language model on 4.4M tokens of general English")
    ```

    Returns:
        The preset folder.
    """
    from tftune.recipe import Recipe, load_recipe

    run, destination = PretrainRun.open(run_dir), Path(destination)
    destination.mkdir(parents=True, exist_ok=False)
    preset = PretrainRun(destination)
    for role in PretrainRun.portable:
        source, target = getattr(run, role), getattr(preset, role)
        target.parent.mkdir(parents=True, exist_ok=True)
        if role.endswith("_weights"):
            copy_as_float16(source, target)
        else:
            shutil.copyfile(source, target)
    shipped = destination.resolve().parent

    def write_path(path):
        inside = Path(path).resolve().is_relative_to(shipped)
        return os.path.relpath(path, destination.resolve()) if inside else Path(path).name

    recipe = run.recipe.to_dict()
    if continue_with is not None:
        training = load_recipe(continue_with).to_dict()
        recipe.update({section: training[section] for section in _TRAINING_SECTIONS})
    recipe["name"] = destination.name  # runs from it are named after the preset by default
    if description is not None:
        recipe["description"] = description
    recipe = Recipe(recipe).with_overrides(overrides)
    preset.write_recipe(recipe, write_path)
    if partners:
        name_partners(destination, partners)
    return destination


def name_partners(run: Path, partners: Mapping[str, str]) -> None:
    """Records in a pretrain run's `run.json` the runs of the other direction, by direction: a run
    beside it or a shipped model's name each (what `pretrain --bidirectional` looks up)."""
    info_file = Path(run) / RUN_INFO
    write_json(info_file, {**read_json(info_file), "partners": dict(partners)})


def copy_as_float16(source: Path, target: Path) -> None:
    """Copies a Keras weights file with its float32 arrays stored as float16, without optimizer state."""
    import h5py
    import numpy as np

    with h5py.File(source, "r") as inp, h5py.File(target, "w") as out:

        def copy(name, item):
            if name.split("/")[0] == "optimizer":
                return  # runs from a preset start a new optimizer; the Adam moments would double the head's size
            if isinstance(item, h5py.Group):
                out.require_group(name).attrs.update(item.attrs)
                return
            data = item[()]
            if data.dtype == np.float32:
                data = data.astype(np.float16)
            compression = "gzip" if data.ndim else None
            out.create_dataset(name, data=data, compression=compression).attrs.update(item.attrs)

        out.attrs.update(inp.attrs)
        inp.visititems(copy)
