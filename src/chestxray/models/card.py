"""The bundle card checked field by field when a bundle is opened: type, range, and agreement with the other fields.

A card is JSON a person can edit, and every consumer (predict, serve, evaluate, explain, ONNX export, the MLflow
model) trusts it: `image_size: "thirty-two"` and `thresholds: "high"` ended in tracebacks (HTTP 500 in serve),
`image_size: 100000` made predict allocate 20.7 GB until the kernel killed it, and NaN thresholds answered "negative"
with status ok. `check_card` refuses each with one line naming the field, what it holds (quoted briefly) and what is
allowed; the weights' own agreement (label count, input channels, finite values) is checked where they are loaded
(chestxray.models.bundle.load_bundle).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from chestxray.data.imaging import RESIZE_MODES  # the geometries prepare can make
from chestxray.errors import ConfigError, ModelError, clip
from chestxray.files import write_json

WEIGHTS = "model.safetensors"
CARD = "card.json"
FORMAT = "chestxray-bundle/1"
REQUIRED_CARD_FIELDS = ("architecture", "num_labels", "in_chans", "image_size", "normalization", "labels")
IMAGE_SIZE_RANGE = (8, 4096)  # prepare's --size range: a model input outside it was never trained
MAX_NAME = 200  # characters of an architecture or label name
TASKS = ("multilabel", "binary", "multiclass")


def _number(value: Any) -> bool:
    """A JSON number (true/false are not) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_card(card: dict[str, Any], where: str) -> dict[str, Any]:
    """Raise ModelError unless every field a consumer reads has the right type and range and agrees with the others
    (labels with num_labels, thresholds with labels, statistics with in_chans). Returns the card."""
    def bad(field: str, allowed: str) -> ModelError:
        return ModelError(f"{where}: {field} {clip(repr(card.get(field)), 60)} is not {allowed}; the card is "
                          "damaged or was edited: export the bundle again (or correct the field)")

    architecture = card.get("architecture")
    if not isinstance(architecture, str) or not architecture.strip() or len(architecture) > MAX_NAME:
        raise bad("architecture", "a model name")
    labels = card.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(n, str) and n.strip() and len(n) <= MAX_NAME
                                                        for n in labels) and len(set(labels)) == len(labels)):
        raise bad("labels", "a list of distinct label names")
    if not _whole(card.get("num_labels")) or card["num_labels"] != len(labels):
        raise ModelError(f"{where}: num_labels {clip(repr(card.get('num_labels')), 40)} does not match the "
                         f"{len(labels)} label name(s); the card is damaged, export the bundle again")
    if card.get("in_chans") not in (1, 3) or isinstance(card.get("in_chans"), bool):
        raise bad("in_chans", "1 or 3")
    low, high = IMAGE_SIZE_RANGE
    if not _whole(card.get("image_size")) or not low <= card["image_size"] <= high:
        raise bad("image_size", f"a whole number of pixels from {low} to {high}")
    if card.get("resize", "pad") not in RESIZE_MODES:
        raise bad("resize", f"one of {list(RESIZE_MODES)}")
    if card.get("task") is not None and card["task"] not in TASKS:
        raise bad("task", f"one of {list(TASKS)}")
    _check_statistics(card, where, bad)
    _check_thresholds(card, labels, where, bad)
    _check_threshold_logits(card, where, bad)
    for field in ("metrics", "preprocessing"):
        if card.get(field) is not None and not isinstance(card[field], dict):
            raise bad(field, "an object")
    return card


def _check_statistics(card: dict[str, Any], where: str, bad) -> None:
    """normalization (a known name or explicit mean/std) and the per-channel input_mean / input_std."""
    from chestxray.data.augment import input_stats

    normalization = card.get("normalization")
    explicit = normalization if isinstance(normalization, dict) else {}
    values = [*explicit.get("mean", []), *explicit.get("std", [])] if isinstance(explicit.get("mean", []), list) \
        and isinstance(explicit.get("std", []), list) else [None]
    if not isinstance(normalization, (str, dict)) or not all(_number(v) for v in values):
        raise bad("normalization", "'gray', 'imagenet' or {'mean': [r, g, b], 'std': [r, g, b]} of finite numbers")
    try:
        input_stats(normalization, card["in_chans"])
    except ConfigError as exc:
        raise ModelError(f"{where}: {exc}; the card is damaged or was edited: export the bundle again") from None
    for field in ("input_mean", "input_std"):
        stats = card.get(field)
        if stats is None:
            continue
        if not (isinstance(stats, list) and len(stats) == card["in_chans"] and all(_number(v) for v in stats)
                and (field == "input_mean" or min(stats) > 0)):
            raise bad(field, f"{card['in_chans']} finite number(s), one per input channel"
                      + (", all above 0" if field == "input_std" else ""))


def _check_thresholds(card: dict[str, Any], labels: list[str], where: str, bad) -> None:
    """thresholds: null, or {label: probability in [0, 1]} naming only the card's labels (NaN answered 'negative')."""
    thresholds = card.get("thresholds")
    if thresholds is None:
        return
    if not isinstance(thresholds, dict):
        raise bad("thresholds", "null or {label: probability from 0 to 1}")
    unknown = [k for k in thresholds if k not in labels]
    if unknown:
        raise ModelError(f"{where}: thresholds name label(s) {[clip(k, 40) for k in unknown[:5]]} that are not among "
                         f"the card's labels; the card is damaged or was edited: export the bundle again")
    for name, value in thresholds.items():
        if not (_number(value) and 0 <= value <= 1):
            raise ModelError(f"{where}: the threshold of {clip(name, 40)!r} is {clip(repr(value), 40)}, not a "
                             "probability from 0 to 1; re-choose the thresholds with 'chestxray evaluate RUN' or "
                             "export the bundle again")


def _check_threshold_logits(card: dict[str, Any], where: str, bad) -> None:
    """threshold_logits (what decisions apply, chestxray.inference.outputs.decision_thresholds): null, or {label:
    finite log-odds} for exactly the labels `thresholds` names."""
    logits = card.get("threshold_logits")
    if logits is None:
        return
    if not isinstance(logits, dict) or not all(_number(v) for v in logits.values()):
        raise bad("threshold_logits", "null or {label: finite log-odds}")
    if set(logits) != set(card.get("thresholds") or {}):
        raise ModelError(f"{where}: threshold_logits and thresholds name different labels; the card is damaged or "
                         "was edited: re-choose the thresholds with 'chestxray evaluate RUN' or export the bundle "
                         "again")


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
    if card.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{card_path}: format {clip(repr(card['format']), 40)}, expected {FORMAT!r}; this bundle was "
                         "written by another program or version: export it again")
    check_card(card, str(card_path))
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


def bundle_folder(path: str | Path) -> Path:
    """The bundle folder of a bundle or run folder (a run holds bundle/card.json)."""
    folder = Path(path)
    return folder / "bundle" if (folder / "bundle" / CARD).exists() else folder


def update_card(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge fields (e.g. thresholds, metrics) into a bundle's card, atomically; returns the new card. New
    `thresholds` without `threshold_logits` drop the old threshold_logits, so the new thresholds are the ones
    applied (read through their log-odds)."""
    card = read_card(path)
    if "thresholds" in fields and "threshold_logits" not in fields:
        card.pop("threshold_logits", None)
    card.update(fields)
    write_json(Path(path) / CARD, card)
    return card
