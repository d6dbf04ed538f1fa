"""Test-time augmentation modes and their check. It imports nothing heavy, so the command line refuses a bad --tta
before torch loads, and predict and evaluate use the same list and message."""

from __future__ import annotations

from chestxray.errors import ConfigError

# forwards per image under each mode: the image; + its mirror; + four corner crops and the centre crop (side 0.875,
# stretched back); ten-crop, as the CheXNet reproductions score: those five crops and their mirrors (torchvision's
# TenCrop of a 0.875 window), without the whole image
TTA_VIEWS = {"none": 1, "hflip": 2, "crop": 6, "tencrop": 10}
TTA_MODES = tuple(TTA_VIEWS)
INTERPOLATED = ("crop", "tencrop")  # modes whose views are resampled (not whole grey levels)


def check_tta(mode: str) -> None:
    """Refuse an unknown test-time augmentation mode with the valid ones."""
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {mode!r}; expected one of {TTA_MODES}")
