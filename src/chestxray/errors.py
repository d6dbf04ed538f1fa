"""Errors a user can fix: the CLI prints them as one message and exits 1; anything else keeps its traceback."""


class ChestXrayError(Exception):
    """Base class: the message says what went wrong, where (file, row, column) and what to do."""


class DataError(ChestXrayError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(ChestXrayError):
    """A setting or option is invalid."""


class ModelError(ChestXrayError):
    """A model name, weights file or bundle cannot be used."""


class DiskFullError(ChestXrayError):
    """A disk (or quota) filled up while writing: the message names the folder, what was kept and how to go on."""


class TrainingInterrupted(ChestXrayError):
    """Training was stopped by the user (Ctrl-C); the message says what was saved and how to continue."""


def clip(value: object, limit: int = 80) -> str:
    """A value as text for a message, cut to about `limit` characters (with the full length said): a 50 MB table
    cell must not become a 50 MB error line."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text):,} characters)"


def clipped(values: object, n: int = 5, limit: int = 60) -> list[str]:
    """The first `n` of some values as text, each cut like `clip` (for 'e.g. [...]' in a message)."""
    return [clip(v, limit) for v in list(values)[:n]]


def quote(value: object, limit: int = 80) -> str:
    """repr() of a value for a message, cut like `clip`."""
    text = value if isinstance(value, str) else str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"…({len(text):,} characters)"


def printable(text: object) -> str:
    """Text safe to print and to write as UTF-8: bytes of a file name that are not UTF-8 (which Python carries as
    surrogate escapes, and which crash any UTF-8 writer) become \\xNN escapes."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
