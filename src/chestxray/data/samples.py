"""Where the bundled real samples live: $CHESTXRAY_DATA, else ../shared/data beside the project checkout."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE = "kaggle-chest-xray-pneumonia"
NIH = "nih-chestxray14"
ENV_VAR = "CHESTXRAY_DATA"


def find_sample_data(start: str | Path | None = None) -> Path | None:
    """The shared data folder holding the sample collections, or None when it cannot be found."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR]).expanduser()
        return path if path.is_dir() else None
    here = Path(start or Path.cwd()).resolve()
    package_root = Path(__file__).resolve().parents[3]
    for base in (here, *here.parents, package_root):
        candidate = base.parent / "shared" / "data"
        if (candidate / KAGGLE).is_dir() or (candidate / NIH).is_dir():
            return candidate
    return None
