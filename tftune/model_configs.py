"""From a recipe to the configs of its models: the training layer's side of `tftune.models`.

The models know nothing of recipes: a model is built from its config (`from_config`) and a
trained one is read back from its preset files (`from_preset`). Training builds new models from
the recipe's sections, and the functions here translate them.

Example:

>>> from tftune.recipe import load_recipe
>>> recipe = load_recipe("lstm-glove")
>>> backbone_config(recipe.encoder, vocabulary_size=100, embedding_dim=8)["num_layers"]
2
"""

from tftune.errors import RecipeError
from tftune.models.backbone import DROPOUT_RATES

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
    return {"output": settings.output, "num_sampled": settings.num_sampled, "output_dropout": output_dropout,
            "ar": settings.ar, "tar": settings.tar, "direction": settings.direction}


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
