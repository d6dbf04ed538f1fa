"""Model bundles: weights in safetensors plus a JSON card; loading never unpickles anything.

card.json fields: format, architecture, num_labels, in_chans, image_size, resize ('pad'|'crop'),
normalization ('gray'|'imagenet' or {"mean": [r, g, b], "std": [r, g, b]}: what the weights expect), input_mean and
input_std (the values applied per input channel), pretrained, labels, task, thresholds ({label: float} or null),
threshold_method, threshold_tta (the test-time augmentation evaluate scored with: the one to score with), data_fingerprint,
metrics ({"training": {"split": "val", "val_auroc", "date"}, "evaluation": {"split", "tta", "macro_auroc", "auroc",
"date", …}}: train writes the first, evaluate the second and keeps the first), seed, versions, created.
Cards written before that layout (a flat metrics object) are read into it (card_metrics).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chestxray.errors import ChestXrayError, ModelError, clip
from chestxray.files import atomic_path, write_json
from chestxray.models.card import check_card

WEIGHTS = "model.safetensors"
CARD = "card.json"
FORMAT = "chestxray-bundle/1"
REQUIRED_CARD_FIELDS = ("architecture", "num_labels", "in_chans", "image_size", "normalization", "labels")


@dataclass
class Bundle:
    """A ready model (eval mode, CPU) with the card that says how to feed it and read its outputs."""

    net: torch.nn.Module
    card: dict[str, Any]
    path: Path

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.card["labels"])

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.card.get("thresholds")


def versions() -> dict[str, str]:
    """Library versions recorded in cards and run folders."""
    import chestxray

    return {"chestxray": chestxray.__version__, "torch": torch.__version__, "python": platform.python_version()}


def save_bundle(out_dir: str | Path, net: torch.nn.Module, card: dict[str, Any]) -> Path:
    """Write model.safetensors and card.json into out_dir (each atomically); returns the folder."""
    missing = [k for k in REQUIRED_CARD_FIELDS if k not in card]
    if missing:
        raise ModelError(f"bundle card for {out_dir} is missing field(s) {missing}; "
                         f"a card needs {list(REQUIRED_CARD_FIELDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    full = {"format": FORMAT, **card}
    full.setdefault("versions", versions())
    full.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(out / CARD, full)
    return out


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
    """Merge fields (e.g. thresholds, metrics) into a bundle's card, atomically; returns the new card."""
    card = read_card(path)
    card.update(fields)
    write_json(Path(path) / CARD, card)
    return card


def load_bundle(path: str | Path) -> Bundle:
    """Build the architecture named in the card and load its safetensors weights (strict)."""
    from chestxray.models.factory import build_model

    folder = bundle_folder(path)  # a run folder holds bundle/
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.exists():
        raise ModelError(f"{folder}: no {WEIGHTS}; the bundle is incomplete, export it again")
    try:
        net = build_model(card["architecture"], num_labels=int(card["num_labels"]), in_chans=int(card["in_chans"]))
    except ChestXrayError as exc:
        raise ModelError(f"{folder / CARD}: cannot build the model the card names ({exc})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc}); the file is truncated or damaged, "
                         "copy or export the bundle again") from None
    damaged = [name for name, tensor in state.items()
               if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if damaged:
        raise ModelError(f"{weights}: {len(damaged)} weight tensor(s) hold NaN or infinite values (e.g. "
                         f"{clip(damaged[0], 60)}); such a model answers nonsense: retrain it, or export the bundle "
                         "from a healthy run")
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes: the card names another architecture or label count
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"{weights}: weights do not fit architecture {card['architecture']!r} with "
                         f"{card['num_labels']} labels as the card says ({detail}); the card belongs to another "
                         "model, export the bundle again") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{weights}: weights do not match architecture {card['architecture']!r} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); the card belongs to "
            "another model, export the bundle again"
        )
    net.eval()
    return Bundle(net=net, card=card, path=folder)
