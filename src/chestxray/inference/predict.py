"""Model inference: per-label probabilities for a prepared split or for loose image files, on CPU or GPU.

Preprocessing is read from the bundle card (image_size, resize, in_chans, normalization), never remembered:
files go through load_model_input (chestxray.data.imaging.load_square, the one decode+resize prepare uses) and
normalize_for_model (chestxray.data.augment.normalize); chestxray.explain.explanations uses the same two. Outputs are sigmoid
probabilities in columns p_<label> (softmax over the classes for a multiclass bundle, plus the argmax class in
column `predicted_class` for image files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from chestxray.data.tasks import probabilities
from chestxray.errors import ConfigError
from chestxray.inference.compat import check_prepared_fits
from chestxray.inference.stream import (  # noqa: F401 (public here too)
    PREDICTED_CLASS,
    ROW_COLUMNS,
    Scorer,
    iter_predictions,
    predicted_classes,
    threshold_tta,
)
from chestxray.inference.tta import TTA_MODES, check_tta  # noqa: F401 (TTA_MODES public here too)
from chestxray.models.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

CROP_FRACTION = 0.875  # "crop" TTA: side of the four corner crops and the centre crop, relative to the image


def score_columns(labels: Sequence[str]) -> list[str]:
    """Names of the probability columns: p_<label>."""
    return [f"p_{name}" for name in labels]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else the GPU when one is present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_bundle(bundle: Bundle | str | Path) -> Bundle:
    """A loaded Bundle from a Bundle, a bundle folder or a run folder."""
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def load_model_input(path: str | Path, card: dict[str, Any]) -> np.ndarray:
    """Decode and resize one file to uint8 (S, S) exactly as prepare stored the bundle's data (card image_size, resize)."""
    from chestxray.data.imaging import load_square

    return load_square(path, int(card["image_size"]), card.get("resize", "pad"))


def normalize_for_model(images: torch.Tensor, card: dict[str, Any]) -> torch.Tensor:
    """uint8 images (B, 1, H, W) or (1, H, W) → the bundle's float input (card in_chans, normalization)."""
    from chestxray.data.augment import normalize

    return normalize(images, int(card["in_chans"]), card["normalization"])


def _views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The input views whose probabilities are averaged: the image, its mirror ('hflip'), or five crops + the image."""
    if tta == "hflip":
        return [images, torch.flip(images, dims=[-1])]
    if tta == "crop":
        h, w = images.shape[-2:]
        ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
        tops_lefts = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
        crops = [
            F.interpolate(images[..., t : t + ch, s : s + cw], size=(h, w), mode="bilinear", align_corners=False)
            for t, s in tops_lefts
        ]
        return [images, *crops]
    return [images]


@torch.inference_mode()
def predict_probs(net: torch.nn.Module, images: torch.Tensor, tta: str = "none",
                  task: str | None = None) -> torch.Tensor:
    """Probabilities (B, L) for normalised images (B, C, H, W), averaged over the TTA views: sigmoid per label, or
    softmax over the classes when task is 'multiclass' (read it from the bundle card)."""
    check_tta(tta)
    probs = [probabilities(net(view).float(), task) for view in _views(images, tta)]
    return torch.stack(probs).mean(0)


def _check_prepared(bundle: Bundle, manifest: dict[str, Any], prepared: str) -> None:
    """The prepared data must carry the bundle's labels and be made as the card says (inference.compat)."""
    check_prepared_fits({**bundle.card, "labels": list(bundle.labels)}, manifest, prepared, bundle.path)


def fingerprint_note(bundle: Bundle, manifest: dict[str, Any], prepared: str) -> str | None:
    """A sentence when `prepared` is not the data the bundle was trained on (its fingerprint differs), else None."""
    trained, given = bundle.card.get("data_fingerprint"), manifest.get("fingerprint")
    if not trained or trained == given:
        return None
    return (f"{prepared} is not the data {bundle.path} was trained on (data fingerprint {str(given)[:12]} vs "
            f"{str(trained)[:12]}); its val split chooses the thresholds")


def predict_split(
    bundle: Bundle | str | Path,
    prepared: str | Path | None = None,
    split: str = "test",
    batch_size: int = 64,
    tta: str = "none",
    num_workers: int = 0,
    device: str | torch.device | None = None,
    verify: str = "sizes",
) -> pd.DataFrame:
    """Scores for every image of a prepared split, in stored order (shards checked first: see ChestXrayDataModule).

    Returns one row per image: image_id, patient_id, the true 0/1 label per label, and p_<label>.
    `prepared` defaults to the folder recorded in the bundle card.
    """
    from chestxray.data.datamodule import ChestXrayDataModule

    check_tta(tta)
    model = as_bundle(bundle)
    prepared = prepared or model.card.get("prepared")
    if not prepared:
        raise ConfigError(f"{model.path}: the card records no prepared dataset; pass the PREPARED folder explicitly")
    dm = ChestXrayDataModule(
        prepared, batch_size=batch_size, num_workers=num_workers,
        in_chans=int(model.card["in_chans"]), normalization=model.card["normalization"], verify=verify,
    )
    _check_prepared(model, dm.manifest, str(prepared))
    dev = resolve_device(device)
    net = model.net.to(dev).eval()
    ids: list[str] = []
    patients: list[str] = []
    truth: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for batch in dm.split_dataloader(split):
        scores.append(predict_probs(net, batch["image"].to(dev, non_blocking=True), tta,
                                    model.card.get("task")).cpu().numpy())
        truth.append(batch["labels"].numpy())
        ids.extend(batch["image_id"])
        patients.extend(batch["patient_id"])
    labels = list(model.labels)
    log.info("predicted %d %s images of %s with tta=%s on %s", len(ids), split, prepared, tta, dev)
    return _frame(ids, patients, labels, np.concatenate(truth), np.concatenate(scores))


def _frame(ids: list[str], patients: list[str], labels: list[str], truth: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"image_id": ids, "patient_id": patients})
    frame[labels] = truth.astype(np.uint8)
    frame[score_columns(labels)] = scores.astype(np.float64)
    return frame


def torch_scorer(
    bundle: Bundle | str | Path, tta: str | None = None, device: str | torch.device | None = None
) -> Scorer:
    """A Scorer running a bundle's network on uint8 pixels (B, S, S): card normalisation, TTA, sigmoid.

    tta None: the mode the stored thresholds were chosen with; another mode than theirs is refused."""
    model = as_bundle(bundle)
    tta = threshold_tta(model.card, tta)
    check_tta(tta)
    card, dev = model.card, resolve_device(device)
    net = model.net.to(dev).eval()

    def score(pixels: np.ndarray) -> np.ndarray:
        inputs = normalize_for_model(torch.from_numpy(pixels).unsqueeze(1), card).to(dev)
        return predict_probs(net, inputs, tta, card.get("task")).cpu().numpy()

    return Scorer(card=card, score=score, source=str(model.path), tta=tta)


def predict_images(
    bundle: Bundle | str | Path,
    paths: Iterable[str | Path],
    batch_size: int = 32,
    tta: str | None = None,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Scores for image files (PNG/JPEG/DICOM), preprocessed as the bundle card says.

    Returns one row per path, in order: path, image_id (file stem), status ('ok' or 'quarantined'),
    reason (why a file could not be used, else ''), and p_<label> (empty for quarantined files); a multiclass bundle
    adds predicted_class (argmax; thresholds do not apply). Use chestxray.inference.stream.iter_predictions to stream many files batch by batch.
    """
    scorer = torch_scorer(bundle, tta=tta, device=device)
    frames = list(iter_predictions(scorer, [Path(p) for p in paths], batch_size=batch_size))
    if not frames:
        return pd.DataFrame(columns=[*ROW_COLUMNS, *score_columns(scorer.labels)])
    return pd.concat(frames, ignore_index=True)
