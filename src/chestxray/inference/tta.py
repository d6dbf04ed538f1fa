"""Test-time augmentation modes and their check. It imports nothing heavy, so the command line refuses a bad --tta
before torch loads, and predict and evaluate use the same list and message."""

from __future__ import annotations

from chestxray.errors import ConfigError

TTA_MODES = ("none", "hflip", "crop")


def check_tta(mode: str) -> None:
    """Refuse an unknown test-time augmentation mode with the valid ones."""
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {mode!r}; expected one of {TTA_MODES}")
