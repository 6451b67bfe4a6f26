"""Errors that the command line reports as one line, without a traceback."""


class TftuneError(Exception):
    """Base class of errors caused by the user's input (exit status 2)."""

    exit_code = 2


class DataError(TftuneError):
    """An input file is missing, unreadable, empty or malformed."""


class RecipeError(TftuneError):
    """A recipe is unknown, or a field is unknown or has a bad value."""


class EmbeddingsError(TftuneError):
    """A vectors file cannot be loaded or does not fit the model."""


class RunError(TftuneError):
    """A run directory is missing, incomplete, locked or would be overwritten."""


class TrainingError(TftuneError):
    """Training diverged (non-finite loss); nothing was written."""

    exit_code = 1
