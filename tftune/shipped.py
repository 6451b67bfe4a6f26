"""Where tftune's shipped data lives: the recipes and the pretrained models.

Nothing but the standard library, so that every layer (the models' `from_preset` included) can
find the shipped folders without importing the recipe code.

Example:

>>> (PRETRAINED_DIR / "lstm-glove-general").name
'lstm-glove-general'
"""

import importlib.resources
from pathlib import Path


def _shipped_dir(name: str) -> Path:
    """Returns a folder of shipped data: the installed package's copy, else the source checkout's.

    The top-level `recipes/` and `pretrained/` of the repository are the only copies in git; a
    wheel or sdist install maps them into the package as `tftune/recipes` and `tftune/pretrained`
    (see setup.cfg). An editable install, or a checkout on `PYTHONPATH`, has no such folders in
    `tftune/` and reads the checkout's own, so edits show up at once. Either way the two folders
    sit side by side, and the recipes' `../pretrained/...` paths hold.

    Args:
        name: "recipes" or "pretrained".

    Returns:
        The folder's path, resolved.

    Example:

    ```python
    _shipped_dir("recipes")  # .../site-packages/tftune/recipes, or <checkout>/recipes
    ```
    """
    packaged = importlib.resources.files("tftune") / name
    if packaged.is_dir():
        # pip unpacks wheels onto disk (never a zip), so the Traversable is a plain Path.
        return Path(packaged).resolve()
    return Path(__file__).resolve().parents[1] / name


RECIPES_DIR = _shipped_dir("recipes")
PRETRAINED_DIR = _shipped_dir("pretrained")
