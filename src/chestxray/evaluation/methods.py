"""Threshold method names ('youden', 'f1', 'sensitivity:0.9') and their parser: no numeric libraries, so the
command line checks --threshold-method before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass

from chestxray.errors import ConfigError

METHODS = ("youden", "f1", "sensitivity:<target>")


@dataclass(frozen=True)
class ThresholdMethod:
    """A parsed method name: kind in {"youden", "f1", "sensitivity"} and, for sensitivity, its target in (0, 1]."""

    kind: str
    target: float | None = None

    def __str__(self) -> str:
        return f"sensitivity:{self.target:g}" if self.kind == "sensitivity" else self.kind


def parse_method(text: str | ThresholdMethod) -> ThresholdMethod:
    """Parse 'youden', 'f1' or 'sensitivity:0.9' (ConfigError with the valid forms otherwise)."""
    if isinstance(text, ThresholdMethod):
        return text
    name = text.strip().lower()
    if name in ("youden", "f1"):
        return ThresholdMethod(name)
    if name.startswith("sensitivity:"):
        try:
            target = float(name.split(":", 1)[1])
        except ValueError:
            target = -1.0
        if 0 < target <= 1:
            return ThresholdMethod("sensitivity", target)
        raise ConfigError(f"threshold method {text!r}: the target sensitivity must be a number in (0, 1], e.g. sensitivity:0.9")
    raise ConfigError(f"unknown threshold method {text!r}; use one of {', '.join(METHODS)} (e.g. sensitivity:0.9)")
