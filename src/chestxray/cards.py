"""Model cards without torch: where a bundle's card and weights live, and reading the card with the checks a loader
needs. A leaf so that torch-free callers (scoring a bundle through its cached ONNX graph) read cards exactly as
chestxray.models.bundle does, which re-exports these names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chestxray.errors import ModelError

WEIGHTS = "model.safetensors"
CARD = "card.json"
REQUIRED_CARD_FIELDS = ("architecture", "num_labels", "in_chans", "image_size", "normalization", "labels")


def bundle_folder(path: str | Path) -> Path:
    """The bundle folder of a bundle or run folder (a run holds bundle/card.json)."""
    folder = Path(path)
    return folder / "bundle" if (folder / "bundle" / CARD).exists() else folder


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of a bundle folder, checked for the fields a loader needs."""
    folder = Path(path)
    card_path = folder / CARD
    if not card_path.exists():
        raise ModelError(f"{folder}: not a model bundle (no {CARD}); a training run writes one in RUN/bundle")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{card_path}: not valid JSON ({exc}); the bundle is damaged, export it again") from exc
    except OSError as exc:
        raise ModelError(f"{card_path}: cannot read the card ({exc.strerror or exc}); check the permissions") from exc
    if not isinstance(card, dict):
        raise ModelError(f"{card_path}: expected a JSON object, found {type(card).__name__}; export the bundle again")
    missing = [k for k in REQUIRED_CARD_FIELDS if k not in card]
    if missing:
        raise ModelError(f"{card_path}: missing field(s) {missing}; the bundle is incomplete, export it again")
    labels = card["labels"]
    if not isinstance(labels, list) or len(labels) != card["num_labels"]:
        raise ModelError(f"{card_path}: num_labels {card['num_labels']!r} does not match the {len(labels)} label "
                         "name(s); the card is damaged, export the bundle again")
    if "metrics" in card:
        card["metrics"] = card_metrics(card["metrics"])
    return card


def card_metrics(metrics: Any) -> dict[str, Any]:
    """A card's metrics in the current layout {"training": {...}, "evaluation": {...}} (either may be absent).

    Older cards held one flat object: train's {"val_auroc": …}, which becomes "training" (split val), or evaluate's
    {"split": …, "macro_auroc": …}, which replaced it and becomes "evaluation"."""
    if not isinstance(metrics, dict) or not metrics:
        return {}
    if "training" in metrics or "evaluation" in metrics:
        return dict(metrics)
    if "split" in metrics or "macro_auroc" in metrics:
        return {"evaluation": dict(metrics)}
    return {"training": {"split": "val", **metrics}}
