"""Where an explain command reads its model and writes its output: a run folder or a bundle (no torch needed, so the
command line checks its argument before loading anything heavy)."""

from __future__ import annotations

from pathlib import Path

from chestxray.errors import ModelError


def explain_target(target: str | Path) -> tuple[Path, Path]:
    """(bundle folder, default output folder) for a RUN (RUN/bundle, RUN/explain) or a BUNDLE (BUNDLE/../explain)."""
    folder = Path(target)
    if (folder / "bundle" / "card.json").exists():
        return folder / "bundle", folder / "explain"
    if (folder / "card.json").exists():
        return folder, folder.parent / "explain"
    raise ModelError(f"{folder}: neither a run folder (with bundle/card.json) nor a model bundle (with card.json)")
