"""Errors that the command line reports as one line, without a traceback."""

# Python holds each byte of a file name or argument that is not valid UTF-8 as a lone surrogate
# U+DC80..U+DCFF (PEP 383's surrogateescape).
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def printable(text):
    r"""`text` as one printable line: line breaks and other control characters, and the bytes of a
    file name or argument that were not valid UTF-8, are shown as escapes.

    Example:

    >>> printable("runs/a\nb") == "runs/a\\nb"
    True
    >>> printable(b"caf\xe9.txt".decode("utf-8", "surrogateescape"))
    'caf\\xe9.txt'
    """
    if text.isprintable():
        return text
    return "".join(_printable_char(char) for char in text)


def _printable_char(char):
    if char.isprintable():
        return char
    if ord(char) in _ESCAPED_BYTES:
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]  # a line feed as \n, ESC as \x1b


def has_undecodable_bytes(text):
    """Whether `text` (a file name or argument) holds bytes that were not valid UTF-8."""
    return any(ord(char) in _ESCAPED_BYTES for char in text)


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
