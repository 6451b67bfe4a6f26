"""Recipes: TOML files that spell out every setting of a tftune run.

A recipe is data. One schema table (`tftune.recipe_schema.SCHEMA`) declares each key's
type, default, allowed values and help; it drives validation, defaults, `--set`
overrides and the docs printed by `describe_schema()`. This module loads recipes, checks
them against the schema, applies overrides and writes them back as TOML.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tftune.errors import RecipeError, has_undecodable_bytes, printable
from tftune.recipe_schema import (
    FILE_NAME,
    SCHEMA,
    SECTIONS,
    STRING_KINDS,
    TOP_LEVEL,
    DistributeSection,
    EmbeddingsSection,
    EncoderSection,
    Field,
    FinetuneSection,
    PrecisionSection,
    PretrainSection,
    Sentinel,
    VocabSection,
    toml_value,
)
from tftune.shipped import PRETRAINED_DIR, RECIPES_DIR


DEFAULT_RECIPE = "lstm-glove"
# A run's [distribute] section describes the machine it ran on, not the model: a recipe taken from a
# run (pretrain --from, finetune without --recipe) starts from these defaults instead.
LOCAL_DISTRIBUTE = (("distribute.strategy", "none"), ("distribute.devices", ""))
# Data are arguments of a run, not recipe settings. Recipes written before (every earlier run's
# recipe.toml, the shipped models' included) still hold these keys: reading such a file drops them,
# with a warning naming the flag that replaced each; an override that sets one is refused.
DATA_KEYS = {
    "pretrain.corpus": "--corpus", "pretrain.valid": "--valid", "pretrain.encoding": "--encoding",
    "finetune.train": "--train", "finetune.valid": "--valid", "finetune.test": "--test",
    "finetune.text_column": "--text-column", "finetune.label_column": "--label-column",
    "finetune.encoding": "--encoding",
}

logger = logging.getLogger(__name__)


def shipped_dirs() -> tuple[Path, ...]:
    """The folders of shipped data (recipes, vectors, corpora, pretrained models), resolved.

    These are the folders in use: inside the installed package, or the checkout's for an
    editable install. Every command reads from them, so none may write there (see
    `tftune.output_paths.check_output_paths`).
    """
    return tuple(path.resolve() for path in (RECIPES_DIR, PRETRAINED_DIR))


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown_name_error(origin: str, section: str | None, key: str) -> RecipeError:
    if section is None:
        names = list(TOP_LEVEL) + list(SCHEMA)
        return RecipeError(f"{origin}: unknown section or key {key!r}{_suggest(key, names)}; "
                           f"valid sections: {', '.join(SCHEMA)}; valid top-level keys: {', '.join(TOP_LEVEL)}")
    if section not in SCHEMA:
        return RecipeError(f"{origin}: unknown section [{section}]{_suggest(section, list(SCHEMA))}; "
                           f"valid sections: {', '.join(SCHEMA)}")
    keys = list(SCHEMA[section])
    return RecipeError(f"{origin}: unknown key {section}.{key}{_suggest(key, keys)}; "
                       f"valid keys of [{section}]: {', '.join(keys)}")


def _resolve_path(path: str, base_dir: Path) -> str:
    if path == "":
        return path
    expanded = Path(path).expanduser()
    return os.path.normpath(expanded if expanded.is_absolute() else base_dir / expanded)


def _checked(field: Field, value: Any, dotted: str, origin: str, base_dir: Path) -> Any:
    try:
        value = field.check(value)
    except ValueError as exc:
        raise RecipeError(f"{origin}: {dotted} must be {exc}, got {_show(value)}") from None
    if isinstance(value, str) and has_undecodable_bytes(value):
        raise RecipeError(f"{origin}: {dotted} '{printable(value)}' is not valid UTF-8, and a run records it "
                          "as UTF-8 text; rename it")
    if field.kind == "path":
        return _resolve_path(value, base_dir)
    return value


def _without_data_keys(data: Mapping[str, Any], path: Path | None = None) -> dict[str, Any]:
    """A recipe tree without the data keys of older recipes (see `DATA_KEYS`).

    A recipe file of the user's (`path`) gets a warning naming the flag to use instead. The
    recipes that tftune wrote itself (a run's, a checkpoint's; no `path`) lose them quietly.
    """
    data, dropped = dict(data), []
    for dotted in DATA_KEYS:
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section] = {name: value for name, value in data[section].items() if name != key}
            dropped.append(dotted)
    if dropped and path is not None:
        flags = ", ".join(f"{dotted} (use {DATA_KEYS[dotted]})" for dotted in dropped)
        logger.warning(f"{path}: ignoring data keys, which are no longer recipe settings: {flags}")
    return data


def _check_tree(data: Mapping[str, Any], origin: str, base_dir: Path) -> dict[str, Any]:
    """Validates a possibly partial recipe tree; resolves relative paths against `base_dir`."""
    tree: dict[str, Any] = {}
    for name, value in data.items():
        if name in TOP_LEVEL:
            tree[name] = _checked(TOP_LEVEL[name], value, name, origin, base_dir)
        elif name in SCHEMA:
            if not isinstance(value, Mapping):
                raise RecipeError(f"{origin}: {name} must be a [{name}] section, got {_show(value)}")
            tree[name] = {}
            for key, item in value.items():
                if key not in SCHEMA[name]:
                    raise _unknown_name_error(origin, name, key)
                tree[name][key] = _checked(SCHEMA[name][key], item, f"{name}.{key}", origin, base_dir)
        elif isinstance(value, Mapping):
            raise _unknown_name_error(origin, name, "")
        else:
            raise _unknown_name_error(origin, None, name)
    return tree


def _complete(tree: Mapping[str, Any], origin: str, file_name: str) -> dict[str, Any]:
    """Fills in defaults, in schema order; every key without a default must be present."""
    complete: dict[str, Any] = {}
    missing = []
    for name, field in TOP_LEVEL.items():
        complete[name] = tree.get(name, file_name if field.default is FILE_NAME else field.default)
    for section, fields in SCHEMA.items():
        given = tree.get(section, {})
        complete[section] = {}
        for key, field in fields.items():
            if key in given:
                complete[section][key] = given[key]
            elif field.required:
                missing.append(f"{section}.{key}")
            else:
                complete[section][key] = field.default
    if missing:
        raise RecipeError(f"{origin}: missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}")
    return complete


def _parse_override(text: str) -> tuple[str | None, str, str]:
    """Splits "section.key=value" into (section, key, raw value); section is None for top-level keys."""
    form = f"override {text!r} must look like section.key=value, e.g. encoder.units=512"
    if "=" not in text:
        raise RecipeError(form)
    dotted, raw = (part.strip() for part in text.split("=", 1))
    if "." not in dotted:
        if dotted in TOP_LEVEL:
            return None, dotted, raw
        raise RecipeError(form)
    section, key = dotted.split(".", 1)
    if not section or not key:
        raise RecipeError(form)
    return section, key, raw


def _parse_override_value(raw: str, field: Field) -> Any:
    """Reads `raw` as a TOML value (3, 0.5, true, "x", ["a", "b"]), falling back to the bare string."""
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if list(parsed) != ["value"]:
        return raw
    value = parsed["value"]
    # A string key takes the text as typed: name=2024 means "2024", not 2024.
    if field.kind in STRING_KINDS and not isinstance(value, str):
        return raw
    return value


def _apply_overrides(
    tree: dict[str, Any], overrides: Sequence[str | tuple[str, Any]], base_dir: Path
) -> dict[str, Any]:
    """Applies "section.key=value" strings (values read as TOML) and `(dotted key, value)` pairs (values as given)."""
    tree = {name: dict(value) if isinstance(value, Mapping) else value for name, value in tree.items()}
    if isinstance(overrides, str):
        overrides = [overrides]  # a single override passed bare
    for override in overrides:
        if isinstance(override, str):
            section, key, raw = _parse_override(override)
            origin = f"override {override!r}"
        else:
            dotted, raw = override
            section, key = dotted.split(".", 1) if "." in dotted else (None, dotted)
            origin = "setting"
        if section is None:
            if key not in TOP_LEVEL:
                raise _unknown_name_error(origin, None, key)
            field, dotted = TOP_LEVEL[key], key
            target = tree
        else:
            if f"{section}.{key}" in DATA_KEYS:
                raise RecipeError(f"{origin}: {section}.{key} is no longer a recipe setting (data are arguments); "
                                  f"pass {DATA_KEYS[f'{section}.{key}']} instead")
            if section not in SCHEMA or key not in SCHEMA[section]:
                raise _unknown_name_error(origin, section, key)
            field, dotted = SCHEMA[section][key], f"{section}.{key}"
            target = tree.setdefault(section, {})
        value = _parse_override_value(raw, field) if isinstance(override, str) else raw
        target[key] = _checked(field, value, dotted, origin, base_dir)
    return tree


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: recipe is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line L, column C)".
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None


def _show(value: Any) -> str:
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


def find_recipe(name_or_path: str | os.PathLike | None = None) -> Path:
    """Returns the file of a shipped recipe name, or checks a recipe file path.

    Args:
        name_or_path: A shipped recipe name (see `list_recipes()`), or a path
            (anything with a "/" or ending in ".toml"). None = `DEFAULT_RECIPE`.

    Returns:
        The recipe file's path.

    Example:

    ```python
    find_recipe("gru-glove")  # .../recipes/gru-glove.toml
    ```
    """
    text = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_RECIPE
    if "/" in text or os.sep in text or text.endswith(".toml"):
        path = Path(text).expanduser()
        if not path.is_file():
            from tftune.data import special_file_kind

            kind = special_file_kind(path)
            raise RecipeError(f"recipe file {text} " + (f"is {kind}, not a regular file" if kind else "does not exist"))
        return path
    path = RECIPES_DIR / f"{text}.toml"
    if not path.is_file():
        available = ", ".join(name for name, _ in list_recipes()) or "none"
        raise RecipeError(f"unknown recipe {text!r}; available recipes: {available} (or give a .toml file path)")
    return path


def list_recipes() -> list[tuple[str, str]]:
    """Lists the shipped recipes.

    Returns:
        (name, description) pairs sorted by name.

    Example:

    ```python
    for name, description in list_recipes():
        print(f"{name:16} {description}")
    ```
    """
    recipes = []
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        description = _read_toml(path).get("description", "")
        recipes.append((path.stem, description if isinstance(description, str) else ""))
    return recipes


def load_recipe(
    name_or_path: str | os.PathLike | None = None, overrides: Sequence[str | tuple[str, Any]] = ()
) -> Recipe:
    """Loads, completes and validates a recipe.

    Relative paths in the file resolve against the file's directory; relative
    paths in `overrides` resolve against the current working directory.

    Args:
        name_or_path: A shipped recipe name or a recipe file path; None =
            `DEFAULT_RECIPE`.
        overrides: applied on top of the file, in order: "section.key=value"
            strings, whose values are read as TOML (`3`, `0.5`, `true`,
            `["a", "b"]`) or else as a bare string, and `("section.key", value)`
            pairs, whose Python values are checked as they are.

    Returns:
        The `Recipe`.

    Raises:
        RecipeError: unknown recipe, invalid TOML, unknown key, bad value or
            missing required key.

    Example:

    ```python
    recipe = load_recipe("gru-glove", ["encoder.units=512", ("finetune.epochs", 6)])
    recipe.encoder.units  # 512
    ```
    """
    return _load_file(find_recipe(name_or_path), overrides)


def _load_file(path: Path, overrides: Sequence[str | tuple[str, Any]], users: bool = True) -> Recipe:
    """The recipe of a file; `users`: a file the user wrote (not a run's), whose old data keys get a warning."""
    tree = _check_tree(_without_data_keys(_read_toml(path), path if users else None), str(path),
                       path.resolve().parent)
    tree = _apply_overrides(tree, overrides, Path.cwd())
    return Recipe(tree, source=path)


class Recipe:
    """A complete, validated recipe: sections of settings.

    Each section is a frozen dataclass generated from `SCHEMA` (`recipe.encoder` is an
    `EncoderSection`, `recipe.encoder.units` an int); paths are absolute strings. `get("section.key")` reads a key named at run time.

    Args:
        data: Recipe tree like the TOML file's (missing keys take their
            defaults). Relative paths resolve against the current directory.
        source: The file the recipe came from, if any; relative paths are
            NOT resolved against it here (use `load_recipe` for files).

    Example:

    ```python
    recipe = load_recipe("lstm-glove")
    recipe.encoder.units, recipe.get("finetune.head"), recipe.name
    bigger = recipe.with_overrides(["encoder.units=512"])
    Path("run/recipe.toml").write_text(bigger.to_toml())
    ```
    """

    def __init__(self, data: Mapping[str, Any], source: str | os.PathLike | None = None):
        self._source = Path(source) if source is not None else None
        origin = str(self._source) if self._source is not None else "recipe"
        file_name = self._source.stem if self._source is not None else "custom"
        tree = _check_tree(_without_data_keys(data), origin, Path.cwd())
        self._data = _complete(tree, origin, file_name)
        for section, values in self._data.items():
            if section in SECTIONS:
                object.__setattr__(self, section, SECTIONS[section](**values))

    # The sections, as typed attributes (set in __init__).
    embeddings: EmbeddingsSection
    vocab: VocabSection
    encoder: EncoderSection
    pretrain: PretrainSection
    finetune: FinetuneSection
    precision: PrecisionSection
    distribute: DistributeSection

    @classmethod
    def from_toml_file(cls, path: str | os.PathLike, overrides: Sequence[str | tuple[str, Any]] = ()) -> Recipe:
        """Loads a recipe file that tftune wrote (`to_toml`: a run's or a checkpoint's), then `overrides`.

        The data keys that older runs' recipes hold are dropped quietly (see `DATA_KEYS`).
        """
        return _load_file(Path(path).expanduser(), overrides, users=False)

    @property
    def name(self) -> str:
        return self._data["name"]

    @property
    def description(self) -> str:
        return self._data["description"]

    @property
    def source(self) -> Path | None:
        """The recipe file this recipe was loaded from, or None."""
        return self._source

    def get(self, dotted_key: str) -> Any:
        """Returns one setting by its dotted name, e.g. `"encoder.units"` or `"name"`."""
        if "." not in dotted_key:
            if dotted_key not in TOP_LEVEL:
                raise _unknown_name_error("recipe", None, dotted_key)
            return self._data[dotted_key]
        section, key = dotted_key.split(".", 1)
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise _unknown_name_error("recipe", section, key)
        return self._data[section][key]

    def with_overrides(self, overrides: Sequence[str | tuple[str, Any]]) -> Recipe:
        """Returns a copy with overrides applied, as `load_recipe` takes them (paths relative to the cwd)."""
        return Recipe(_apply_overrides(self._data, overrides, Path.cwd()), source=self._source)

    def to_dict(self) -> dict[str, Any]:
        """Returns the recipe as plain nested dicts (a fresh copy)."""
        return {name: dict(value) if isinstance(value, dict) else value for name, value in self._data.items()}

    def to_toml(self, write_path: Callable[[str], str] | None = None) -> str:
        """Returns the recipe as TOML text that `Recipe.from_toml_file` reads back equal.

        Args:
            write_path: How to write each (absolute) path, e.g. relative to the folder the file
                goes to, so that it moves with the files it names; None writes them as they are.
                Relative paths read back relative to the file's folder.
        """

        def written(section: str, key: str, value: Any) -> Any:
            if write_path is None or SCHEMA[section][key].kind != "path":
                return value
            return write_path(value)

        lines = [f"{name} = {toml_value(self._data[name])}" for name in TOP_LEVEL]
        for section in SCHEMA:
            lines += ["", f"[{section}]"]
            lines += [f"{key} = {toml_value(written(section, key, value))}" for key, value in self._data[section].items()]
        return "\n".join(lines) + "\n"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipe):
            return NotImplemented
        return self._data == other._data

    def __repr__(self) -> str:
        return f"Recipe(name={self.name!r}, source={str(self._source) if self._source else None!r})"


def describe_schema() -> str:
    """Returns the docs of every recipe key: key, type, default and help.

    Example:

    ```python
    print(describe_schema())
    ```
    """
    rows = [(name, field) for name, field in TOP_LEVEL.items()]
    rows += [(f"{section}.{key}", field) for section, fields in SCHEMA.items() for key, field in fields.items()]
    table = []
    for dotted, field in rows:
        default = repr(field.default) if isinstance(field.default, Sentinel) else toml_value(field.default)
        help_text = field.help
        if field.kind == "choice":
            help_text += " One of: " + ", ".join(field.choices) + "."
        table.append((dotted, field.type_label(), default, help_text))
    headers = ("key", "type", "default", "help")
    widths = [max(len(row[i]) for row in [headers, *table]) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]
        for row in [headers, *table]
    ) + "\n"
