"""From recipes and runs to models: each model's config, and `from_preset` loading.

A model is rebuilt one way only: its config (`get_config`), then `from_config`, then its
weights. The configs of a recipe's models are made here, from the recipe's sections; a
finetune run also keeps its classifier's config (`FinetuneRun.model_config`), so that export,
re-export and `tftune.load` rebuild exactly the model that was trained.

Example:

>>> from tftune.models import TextBackbone, TextClassifier
>>> backbone = TextBackbone.from_preset("lstm-glove-general")  # doctest: +SKIP
>>> classifier = TextClassifier.from_preset("lstm-glove-general", num_classes=6)  # doctest: +SKIP
"""

import keras

from tftune.errors import RecipeError, RunError
from tftune.models.backbone import DROPOUT_RATES, TextBackbone
from tftune.models.classifier import ClassifierEnsemble, TextClassifier
from tftune.models.language_model import LanguageModel
from tftune.models.preprocessor import TextPreprocessor
from tftune.presets import resolve_run
from tftune.runs import FinetuneRun, PretrainRun

# The [encoder] keys that leave the weights alone: a fine-tuning recipe may differ from the pretrain
# run there, as fine-tuning takes the run's rates (times finetune.dropout_scale).
ENCODER_DROPOUT_KEYS = (*DROPOUT_RATES, "output_dropout")

def encoder_dropouts(encoder_settings, scale=1.0):
    """`(backbone dropout rates, output_dropout)` of an `EncoderSection`, each rate times `scale`.

    Example:

    >>> from tftune.recipe import load_recipe
    >>> encoder_dropouts(load_recipe("lstm-glove", ["encoder.output_dropout=0.3"]).encoder, 0.5)[1]
    0.15
    """
    rates = {}
    for key in ENCODER_DROPOUT_KEYS:
        rates[key] = getattr(encoder_settings, key) * scale
        if rates[key] >= 1:
            raise RecipeError(
                f"finetune.dropout_scale = {scale:g} takes encoder.{key} from {getattr(encoder_settings, key):g} to "
                f"{rates[key]:g}; every scaled dropout rate must stay below 1"
            )
    return rates, rates.pop("output_dropout")


def backbone_config(encoder_settings, vocabulary_size, embedding_dim, dropout_scale=1.0):
    """The `TextBackbone` config of a recipe's `[encoder]` section, rates times `dropout_scale`."""
    rates, _ = encoder_dropouts(encoder_settings, dropout_scale)
    return {
        "vocabulary_size": vocabulary_size,
        "embedding_dim": embedding_dim,
        "cell": encoder_settings.cell,
        "num_layers": encoder_settings.layers,
        "units": encoder_settings.units,
        **rates,
    }


def language_model_config(recipe):
    """`LanguageModel`'s arguments (besides the backbone) from a recipe's `[pretrain]` and `[encoder]`."""
    settings = recipe.pretrain
    _, output_dropout = encoder_dropouts(recipe.encoder)
    return {"output": settings.output, "num_sampled": settings.num_sampled,
            "output_dropout": output_dropout, "ar": settings.ar, "tar": settings.tar}


def classifier_config(recipe, pretrain_recipe, num_classes, name="classifier"):
    """`TextClassifier`'s arguments (besides the backbone) from a fine-tuning recipe and the pretrain run's.

    The backbone's output dropout is the pretrain run's times `finetune.dropout_scale`.
    """
    settings = recipe.finetune
    _, output_dropout = encoder_dropouts(pretrain_recipe.encoder, settings.dropout_scale)
    return {
        "num_classes": num_classes,
        "head": settings.head,
        "head_units": settings.head_units,
        "head_dropout": settings.head_dropout,
        "pool_embeddings": settings.pool_embeddings,
        "direction": pretrain_recipe.pretrain.direction,
        "output_dropout": output_dropout,
        "name": name,
    }


def pretrain_backbone_config(run, dropout_scale=1.0):
    """The `TextBackbone` config of an opened `PretrainRun`."""
    return backbone_config(run.recipe.encoder, len(run.vocab), run.embedding_dim, dropout_scale)


def load_weights(model, path, what):
    """`model.load_weights(path)`, with a one-line `RunError` when the file is missing or does not fit."""
    if not path.is_file():
        raise RunError(f"{path}: missing; not a complete run")
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as e:
        raise RunError(f"{path}: does not fit {what} ({e})") from None
    return model


def load_backbone(preset, **config):
    """`TextBackbone.from_preset`: the pretrained encoder, its weights loaded.

    Args:
        preset: a shipped model's name or a pretrain run directory (or an opened `PretrainRun`).
        **config: config entries to change (dropout rates, `use_cudnn`).
    """
    run = _pretrain_run(preset)
    backbone = TextBackbone.from_config({**pretrain_backbone_config(run), **config})
    return load_weights(backbone, run.encoder_weights, "the recipe's encoder")


def run_preprocessor(run, max_len=None):
    """The `TextPreprocessor` of a run: its vocabulary and tokenizer, documents cut to `max_len`."""
    return TextPreprocessor(run.vocab, lowercase=run.tokenizer.lowercase, max_len=max_len)


def load_language_model(preset, **config):
    """`LanguageModel.from_preset`: the pretrained encoder and next-token head, their weights loaded,
    with the run's preprocessor (so it takes text)."""
    run = _pretrain_run(preset)
    backbone = TextBackbone.from_config({**pretrain_backbone_config(run), **config})
    model = LanguageModel(backbone, **language_model_config(run.recipe), preprocessor=run_preprocessor(run))
    return load_weights(model, run.language_model_weights, f"pretrain.output = {model.output_kind!r}")


def preset_direction(preset):
    """The reading direction (`"forward"` or `"backward"`) of a pretrain run's language model."""
    return _pretrain_run(preset).recipe.pretrain.direction


def load_classifier(run_dir):
    """The trained classifier (or ensemble) of a finetune run, its weights loaded, with the run's
    preprocessor (so it takes text) and compiled for `fit` and `evaluate`.

    Rebuilt from the config the run keeps; runs written before it was kept are rebuilt from
    their recipe (with the recipe's own dropout rates, which only matter in training).
    """
    run = run_dir if isinstance(run_dir, FinetuneRun) else FinetuneRun.open(run_dir)
    config = run.model_config() or _recipe_classifier_config(run)
    model = keras.saving.deserialize_keras_object(config)
    load_weights(model, run.classifier_weights, "the run's classifier")
    if model.preprocessor is None:  # a run written before the preprocessor was part of the model
        model.preprocessor = run_preprocessor(run, run.recipe.finetune.max_len)
    else:  # the vocabulary is the run's file, not part of the config
        model.preprocessor.set_vocabulary(run.vocab)
    model.compile_for_classes()
    return model


def _recipe_classifier_config(run):
    """The serialized classifier of a finetune run that kept no `model_config`, from its recipe."""
    recipe, labels = run.recipe, run.labels()
    backbone = backbone_config(recipe.encoder, len(run.vocab), run.embedding_dim, recipe.finetune.dropout_scale)
    # Runs written before ensembles existed hold one forward classifier.
    members = run.info.get("members") or [{"name": "classifier", "direction": "forward"}]
    classifiers = []
    for member in members:
        head = classifier_config(recipe, recipe, len(labels), member["name"])
        classifiers.append(TextClassifier(TextBackbone(**backbone), **{**head, "direction": member["direction"]}))
    model = classifiers[0] if len(classifiers) == 1 else ClassifierEnsemble(classifiers)
    return keras.saving.serialize_keras_object(model)


def _pretrain_run(preset):
    return preset if isinstance(preset, PretrainRun) else PretrainRun.open(resolve_run(preset))
