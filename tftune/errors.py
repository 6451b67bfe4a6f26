"""Errors that the command line reports as one line, without a traceback."""


class TftuneError(Exception):
    """Base class of errors caused by the user's input (exit status 2)."""

    exit_code = 2


class DataError(TftuneError):
    """An input file is missing, unreadable, empty or malformed."""


class EncodingError(DataError):
    """A text file does not decode with the expected encoding.

    `str(error)` names the file, the byte (and line) and the likely encoding; `fixed_by(fix)`
    gives the same message ending with how to fix it, e.g. `fixed_by("pass --encoding latin-1")`.

    Args:
        problem: what is wrong, starting with the file name.
        suggestion: an encoding the file is probably in, e.g. "latin-1".
    """

    def __init__(self, problem, suggestion):
        self.problem = problem
        self.suggestion = suggestion
        super().__init__(f"{problem}; is it {suggestion} text?")

    def fixed_by(self, fix):
        return f"{self.problem}; if it is {self.suggestion} text, {fix}"


class RecipeError(TftuneError):
    """A recipe is unknown, or a field is unknown or has a bad value."""


class EmbeddingsError(TftuneError):
    """A vectors file cannot be loaded or does not fit the model."""


class RunError(TftuneError):
    """A run directory is missing, incomplete, locked or would be overwritten."""


class WriteError(TftuneError):
    """An output could not be written (disk full, file too large); nothing was written (exit status 1)."""

    exit_code = 1


class TrainingError(TftuneError):
    """Training diverged (non-finite loss); nothing was written."""

    exit_code = 1


class Interrupted(TftuneError):
    """Stopped by SIGINT or SIGTERM; the message says what was kept and how to resume (exit status 130)."""

    exit_code = 130
