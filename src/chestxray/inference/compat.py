"""Whether prepared data fits a model: the same labels, made the same way (size, resize mode and the other
preprocessing settings). It reads the card and the manifest only (no torch), so the command line refuses a
mismatch at once and evaluation checks again with the loaded bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chestxray.data.shards import preprocessing
from chestxray.errors import ModelError


def check_prepared_fits(card: dict[str, Any], manifest: dict[str, Any], prepared: str | Path,
                        bundle_path: str | Path) -> None:
    """Refuse prepared data whose labels or preprocessing differ from the bundle card's: its scores, and thresholds
    chosen from them, would mean nothing."""
    labels = list(card.get("labels") or [])
    if list(manifest["labels"]) != labels:
        raise ModelError(f"{prepared}: labels {list(manifest['labels'])} differ from the bundle's {labels} "
                         f"({bundle_path}); evaluate on data prepared for this model, or score it as external data "
                         "with labels mapped through the vocabulary: chestxray evaluate RUN --data FOLDER")
    if int(manifest["image_size"]) != int(card["image_size"]):
        raise ModelError(f"{prepared}: images are {manifest['image_size']} px but the bundle {bundle_path} expects "
                         f"{card['image_size']} px; prepare the data with --size {card['image_size']}")
    data_resize, model_resize = manifest.get("resize", "pad"), card.get("resize", "pad")
    if data_resize != model_resize:
        raise ModelError(f"{prepared}: images were prepared with --resize {data_resize} but the bundle {bundle_path} "
                         f"was trained on --resize {model_resize}; prepare the data with --resize {model_resize} "
                         f"--size {card['image_size']}")
    made, expected = preprocessing(manifest), card.get("preprocessing") or {}
    differ = {k: (made.get(k), v) for k, v in expected.items() if k in made and made[k] != v}
    if differ:
        detail = "; ".join(f"{k}: data {a!r}, model {b!r}" for k, (a, b) in differ.items())
        raise ModelError(f"{prepared}: prepared differently from the bundle's training data ({detail}); "
                         "prepare the data again with this chestxray version and the bundle's settings")
