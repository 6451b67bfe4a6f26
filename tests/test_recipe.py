"""Tests of recipe loading, validation, overrides, paths and TOML writing."""

import tomllib
from pathlib import Path

import pytest

from tftune.errors import RecipeError
from tftune.recipe import (
    DATA_KEYS,
    DEFAULT_RECIPE,
    RECIPES_DIR,
    SCHEMA,
    TOP_LEVEL,
    Recipe,
    describe_schema,
    find_recipe,
    list_recipes,
    load_recipe,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {
    "rnn-glove": "simple_rnn",
    "lstm-glove": "lstm",
    "gru-glove": "gru",
    "lstm-word2vec": "lstm",
    "gru-word2vec": "gru",
}

MINIMAL_RECIPE = """
[embeddings]
path = "vectors/glove.txt"
format = "glove"

[encoder]
cell = "gru"

[pretrain]
epochs = 1

[finetune]
epochs = 3
"""


def _python_type_ok(kind, value):
    if kind in ("str", "name", "text", "choice", "path"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, float)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_recipes_are_listed():
    assert {name for name, _ in list_recipes()} == set(SHIPPED)
    assert all(description for _, description in list_recipes())
    assert DEFAULT_RECIPE in SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipes_unfreeze_gradually(name):
    from tftune.schedules import unfreezing_stages

    recipe = load_recipe(name)
    finetune = recipe.finetune
    assert finetune.unfreeze == "gradual"
    stages = unfreezing_stages(recipe.encoder.layers, finetune.stage_epochs, finetune.epochs)
    # The head alone, then one more recurrent layer per stage, and the longest stage trains them all.
    assert [stage.trainable_layers for stage in stages] == list(range(recipe.encoder.layers + 1))
    assert stages[-1].epochs > finetune.stage_epochs


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipe_is_complete_and_typed(name):
    path = RECIPES_DIR / f"{name}.toml"
    with open(path, "rb") as file:
        raw = tomllib.load(file)
    # Every key is spelled out in the file itself, not filled from defaults.
    assert set(raw) == set(TOP_LEVEL) | set(SCHEMA)
    for section, fields in SCHEMA.items():
        assert set(raw[section]) == set(fields), section

    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.get("encoder.cell") == SHIPPED[name]
    for section, fields in SCHEMA.items():
        for key, field in fields.items():
            value = getattr(getattr(recipe, section), key)
            assert _python_type_ok(field.kind, value), f"{section}.{key} = {value!r}"
            assert field.check(value) == value
    assert Path(recipe.get("embeddings.path")).parent == REPO / "pretrained"
    assert Path(recipe.get("embeddings.path")).is_file()
    # Data are arguments of a run, not recipe settings.
    assert not any(f"{section}.{key}" in DATA_KEYS for section, fields in SCHEMA.items() for key in fields)


def test_default_recipe_is_loaded_without_a_name():
    assert load_recipe().name == DEFAULT_RECIPE


def test_overrides_set_typed_values():
    recipe = load_recipe("gru-glove", [
        "encoder.units=512",
        "encoder.dropout=0",  # an int where a float is expected
        "embeddings.lowercase=false",
        "finetune.head=last",
        "finetune.learning_rate=1e-3",
        "name=my-run",
    ])
    assert recipe.get("encoder.units") == 512
    assert recipe.get("encoder.dropout") == 0.0 and isinstance(recipe.get("encoder.dropout"), float)
    assert recipe.get("embeddings.lowercase") is False
    assert recipe.get("finetune.head") == "last"
    assert recipe.get("finetune.learning_rate") == 0.001
    assert recipe.name == "my-run"


def test_with_overrides_returns_a_new_recipe():
    recipe = load_recipe("lstm-glove")
    bigger = recipe.with_overrides(["encoder.layers=3"])
    assert bigger.get("encoder.layers") == 3
    assert recipe.get("encoder.layers") == 2
    assert bigger.source == recipe.source


@pytest.mark.parametrize("override, fragments", [
    ("encoder.unit=3", ["encoder.unit", "cell, layers, units, dropout", "did you mean units"]),
    ("encoders.units=3", ["[encoders]", "embeddings, vocab, encoder, pretrain, finetune, precision"]),
    ("encoder.units=abc", ["encoder.units", "an int in 1..16384", '"abc"']),
    ("encoder.units=2.5", ["encoder.units", "an int", "2.5"]),
    ("encoder.layers=9", ["encoder.layers", "1..8", "9"]),
    ("encoder.dropout=1.0", ["encoder.dropout", "[0, 1)", "1.0"]),
    ("encoder.cell=lstn", ["encoder.cell", '"simple_rnn", "lstm", "gru"', '"lstn"']),
    ("embeddings.lowercase=yes", ["embeddings.lowercase", "true or false", '"yes"']),
    ("precision.policy=fp16", ["precision.policy", '"mixed_float16"', '"fp16"']),
    ("embeddings.path=", ["embeddings.path", "non-empty path"]),
    # Data are arguments: the override names the flag to use.
    ("pretrain.corpus=[]", ["pretrain.corpus", "no longer a recipe setting", "--corpus"]),
    ("finetune.train=train.csv", ["finetune.train", "no longer a recipe setting", "--train"]),
    ("encoder.units", ["section.key=value"]),
    ("units=3", ["section.key=value"]),
    # The name is the default run folder's, runs/NAME-pretrain: it must stay inside runs/.
    ("name=../../elsewhere", ["name", "without / \\ or ..", '"../../elsewhere"']),
    ("name=a/b", ["name", "without / \\ or .."]),
    ("name=..", ["name", "without / \\ or .."]),
    ('name="two\\nlines"', ["name", "one-line name"]),
    ("embeddings.path=caf\udce9.txt", ["embeddings.path", "caf\\xe9.txt", "not valid UTF-8"]),
])
def test_bad_override_names_the_key_and_valid_options(override, fragments):
    with pytest.raises(RecipeError) as info:
        load_recipe("lstm-glove", [override])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_bad_toml_names_file_and_line(tmp_path):
    path = _write(tmp_path / "broken.toml", '[encoder]\ncell = "lstm"\nunits = \n')
    with pytest.raises(RecipeError, match=r"broken\.toml.*line 3"):
        load_recipe(str(path))


@pytest.mark.parametrize("top, bottom, fragments", [
    ("", "[decoder]\nunits = 3\n", ["[decoder]", "valid sections: embeddings"]),
    ("seed = 3\n", "", ["'seed'", "valid sections", "name, description"]),
    ("", "[vocab]\nmax = 3\n", ["vocab.max", "max_size, min_freq"]),
    ("", "[vocab]\nmax_size = \"big\"\n", ["vocab.max_size", "int in 10..5000000", '"big"']),
    ("", "[precision]\npolicy = \"half\"\n", ["precision.policy", '"auto"', '"half"']),
    ("precision = 3\n", "", ["precision", "section"]),
])
def test_bad_recipe_file_names_file_key_and_valid_options(tmp_path, top, bottom, fragments):
    # Top-level keys go before the first table, new tables after the others.
    path = _write(tmp_path / "custom.toml", top + MINIMAL_RECIPE + bottom)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert "custom.toml" in message
    for fragment in fragments:
        assert fragment in message


def test_missing_required_keys_are_all_named(tmp_path):
    path = _write(tmp_path / "partial.toml", '[encoder]\ncell = "lstm"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    for key in ("embeddings.path", "embeddings.format", "pretrain.epochs", "finetune.epochs"):
        assert key in str(info.value)


def test_overrides_can_supply_required_keys(tmp_path):
    path = _write(tmp_path / "partial.toml", MINIMAL_RECIPE.replace("epochs = 3\n", ""))
    with pytest.raises(RecipeError, match="finetune.epochs"):
        load_recipe(str(path))
    assert load_recipe(str(path), ["finetune.epochs=2"]).get("finetune.epochs") == 2


def test_user_recipe_may_omit_keys_with_defaults(tmp_path):
    recipe = load_recipe(str(_write(tmp_path / "mine.toml", MINIMAL_RECIPE)))
    assert recipe.name == "mine"
    assert recipe.description == ""
    for section, fields in SCHEMA.items():
        for key, field in fields.items():
            if not field.required:
                assert recipe.get(f"{section}.{key}") == field.default


def test_relative_paths_resolve_against_file_then_cwd(tmp_path, monkeypatch):
    path = _write(tmp_path / "recipes" / "mine.toml", MINIMAL_RECIPE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(str(path))
    assert recipe.get("embeddings.path") == str(tmp_path / "recipes" / "vectors" / "glove.txt")
    assert load_recipe(str(path), ["embeddings.path=~/glove.txt"]).get("embeddings.path") == str(
        Path.home() / "glove.txt")
    two = recipe.with_overrides(["embeddings.path=../b.txt"])
    assert two.get("embeddings.path") == str(tmp_path / "b.txt")


def test_an_older_recipe_s_data_keys_are_dropped_with_a_warning_naming_the_flag(tmp_path, caplog):
    older = MINIMAL_RECIPE.replace("[pretrain]\n", '[pretrain]\ncorpus = ["corpus.txt"]\n').replace(
        "[finetune]\n", '[finetune]\ntrain = "train.csv"\ntext_column = "review"\n')
    with caplog.at_level("WARNING", logger="tftune.recipe"):
        recipe = load_recipe(str(_write(tmp_path / "older.toml", older)))
    assert recipe == load_recipe(str(_write(tmp_path / "newer.toml", MINIMAL_RECIPE)), ["name=older"])
    [warning] = caplog.messages
    for words in ("pretrain.corpus (use --corpus)", "finetune.train (use --train)",
                  "finetune.text_column (use --text-column)"):
        assert words in warning
    # A run's own recipe is tftune's record: read quietly.
    caplog.clear()
    assert Recipe.from_toml_file(tmp_path / "older.toml") == recipe
    assert caplog.messages == []


def test_to_toml_round_trip(tmp_path):
    recipe = load_recipe("lstm-word2vec", [
        f"finetune.learning_rate={0.1 + 0.2!r}",
        "pretrain.learning_rate=1e-05",
        "finetune.lr_decay=2.6000000000000001",
        'description="quotes \\" backslash \\\\ tab \\t newline \\n and ünïcödé"',
    ])
    path = _write(tmp_path / "saved.toml", recipe.to_toml())
    again = Recipe.from_toml_file(path)
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert again.get("finetune.learning_rate") == 0.1 + 0.2
    assert again.description == recipe.description
    assert again.to_toml() == recipe.to_toml()


def test_to_dict_is_plain_and_sections_are_read_only():
    recipe = load_recipe("rnn-glove")
    data = recipe.to_dict()
    assert isinstance(data["encoder"], dict)
    data["encoder"]["units"] = 1
    assert recipe.get("encoder.units") == 128
    with pytest.raises(AttributeError):  # sections are frozen dataclasses
        recipe.encoder.units = 1
    assert Recipe(data).get("encoder.units") == 1


def test_unknown_recipe_name_lists_available():
    with pytest.raises(RecipeError) as info:
        load_recipe("lstm-glov")
    for name in SHIPPED:
        assert name in str(info.value)


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match="nothing.toml does not exist"):
        load_recipe(str(tmp_path / "nothing.toml"))


def test_find_recipe_tells_names_from_paths(tmp_path, monkeypatch):
    assert find_recipe("gru-glove") == RECIPES_DIR / "gru-glove.toml"
    _write(tmp_path / "gru-glove.toml", MINIMAL_RECIPE)
    monkeypatch.chdir(tmp_path)
    assert find_recipe("gru-glove.toml") == Path("gru-glove.toml")
    assert load_recipe("gru-glove.toml").get("embeddings.path") == str(tmp_path / "vectors" / "glove.txt")


def test_get_rejects_unknown_keys():
    recipe = load_recipe("gru-word2vec")
    assert recipe.get("name") == "gru-word2vec"
    with pytest.raises(RecipeError, match="valid keys of \\[finetune\\]"):
        recipe.get("finetune.lr")


def test_describe_schema_lists_every_key():
    docs = describe_schema()
    for section, fields in SCHEMA.items():
        for key, field in fields.items():
            line = next(line for line in docs.splitlines() if line.startswith(f"{section}.{key} "))
            assert field.help in line
            assert ("required" in line) == field.required


def test_each_list_of_choices_is_its_owner_s():
    """The recipe schema and the command line take each list of choices from the module that owns it."""
    from tftune import cli, distribute, embeddings, models
    from tftune.recipe import SCHEMA

    assert SCHEMA["distribute"]["strategy"].choices is distribute.STRATEGIES
    assert SCHEMA["embeddings"]["format"].choices is embeddings.FORMATS is cli.FORMATS
    assert SCHEMA["embeddings"]["oov"].choices is embeddings.OOV_TREATMENTS
    assert SCHEMA["encoder"]["cell"].choices is models.CELLS
    assert SCHEMA["pretrain"]["output"].choices is models.OUTPUTS
    assert SCHEMA["pretrain"]["direction"].choices is models.DIRECTIONS
    assert SCHEMA["finetune"]["head"].choices is models.HEADS


def test_the_recipe_and_the_command_line_import_neither_tensorflow_nor_gensim():
    """Reading a recipe and `tftune --help` stay fast: the heavy libraries load when training starts."""
    import subprocess
    import sys

    code = ("import sys, tftune.cli, tftune.recipe; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'gensim') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
