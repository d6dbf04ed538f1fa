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
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chestxray.errors import ChestXrayError, ModelError, clip
from chestxray.files import atomic_path, write_json
from chestxray.models.card import (  # noqa: F401 - the card's reading and writing, public here too
    CARD,
    FORMAT,
    REQUIRED_CARD_FIELDS,
    WEIGHTS,
    bundle_folder,
    card_metrics,
    read_card,
    update_card,
)


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
