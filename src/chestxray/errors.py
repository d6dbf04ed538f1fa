"""Errors a user can fix: the CLI prints them as one message and exits 1; anything else keeps its traceback."""


class ChestXrayError(Exception):
    """Base class: the message says what went wrong, where (file, row, column) and what to do."""


class DataError(ChestXrayError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(ChestXrayError):
    """A setting or option is invalid."""


class ModelError(ChestXrayError):
    """A model name, weights file or bundle cannot be used."""


class TrainingInterrupted(ChestXrayError):
    """Training was stopped by the user (Ctrl-C); the message says what was saved and how to continue."""
