"""Label schemas: a task is an ordered tuple of label names; 'normal' is the all-zero row."""

from __future__ import annotations

import difflib

NIH14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"

# Spellings found in public releases mapped onto the canonical names above.
ALIASES: dict[str, str] = {
    "Infiltrate": "Infiltration",
    "Pleural Thickening": "Pleural_Thickening",
    "Pleural-Thickening": "Pleural_Thickening",
}


def canonical_label(name: str) -> str:
    """Map a dataset's spelling of a finding onto its canonical name (unknown names pass through)."""
    name = name.strip()
    return ALIASES.get(name, name)


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean X?)' hint for an unknown name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
