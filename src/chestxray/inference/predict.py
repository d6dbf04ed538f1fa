"""Model inference with PyTorch: per-label probabilities for a prepared split or for loose image files, CPU or GPU.

Scoring goes through the one path (chestxray.inference.scoring): files are decoded and resized by load_pixels
(chestxray.data.imaging.load_square, the decode + resize prepare uses), shards hold those same pixels, and
score_pixels applies the card's TTA around torch_backend (normalize_for_model, the network, sigmoid). Outputs are
sigmoid probabilities in columns p_<label> (softmax over the classes for a multiclass bundle, plus the argmax class
in column `predicted_class` for image files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from chestxray.data.tasks import probabilities
from chestxray.errors import ConfigError
from chestxray.inference.compat import check_prepared_fits
from chestxray.inference.engines import bundle_backend, bundle_scorer, with_ood
from chestxray.inference.ood import feature_tap
from chestxray.inference.runtime import check_engine
from chestxray.inference.scoring import Backend, Scorer, make_scorer, pixel_hash, threshold_tta
from chestxray.inference.stream import (  # noqa: F401 (public here too)
    PREDICTED_CLASS,
    ROW_COLUMNS,
    iter_predictions,
    predicted_classes,
)
from chestxray.inference.tta import TTA_MODES, check_tta  # noqa: F401 (TTA_MODES public here too)
from chestxray.locks import reading
from chestxray.models.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)


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


def normalize_for_model(images: torch.Tensor, card: dict[str, Any]) -> torch.Tensor:
    """Grey levels (B, 1, H, W) or (1, H, W), uint8 or float in [0, 255] → the bundle's float input (card in_chans,
    normalization)."""
    from chestxray.data.augment import normalize

    return normalize(images, int(card["in_chans"]), card["normalization"])


def torch_backend(net: torch.nn.Module, card: dict[str, Any], device: str | torch.device | None = None) -> Backend:
    """The scoring Backend of a bundle's network: grey-level views (B, 1, S, S) → normalize_for_model → net →
    sigmoid (softmax for a multiclass card), on `device` (default: the GPU when present)."""
    dev = resolve_device(device)
    net = net.to(dev).eval()
    task = card.get("task")

    @torch.inference_mode()
    def forward(views: np.ndarray) -> np.ndarray:
        inputs = normalize_for_model(torch.from_numpy(views), card).to(dev, non_blocking=True)
        return probabilities(net(inputs).float(), task).cpu().numpy()

    return Backend("torch", forward, tap=lambda: feature_tap(net, card["architecture"]))


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
    tta: str | None = None,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    verify: str = "auto",
    hashes: bool = False,
    labels_fit: bool = True,
    engine: str = "auto",
    backend: Backend | None = None,
) -> pd.DataFrame:
    """Scores for every image of a prepared split, in stored order (the split's shards checked first, `verify` as in
    ChestXrayDataModule), through the one scoring path on the stored pixels.

    Returns one row per image: image_id, patient_id, the true label per label (0/1; NaN where a merged dataset's
    source does not annotate it), `source` when the dataset has several, `pixel_hash` with `hashes` (blake2b of the
    stored pixels: the same image prepared the same way hashes the same), and p_<label>. labels_fit=False scores
    data labelled otherwise (external validation maps the labels itself): its truth columns are the data's own.
    `prepared` defaults to the folder recorded in the bundle card. `tta` None: the card's stored mode; evaluate
    passes its own (it re-chooses the thresholds on these scores). `engine` as in
    chestxray.inference.engines.bundle_backend (ONNX Runtime on the CPU by default), or a ready `backend` of this
    bundle (evaluate makes one for several splits).
    """
    from chestxray.data.datamodule import ChestXrayDataModule

    model = as_bundle(bundle)
    tta = threshold_tta(model.card) if tta is None else tta
    check_tta(tta)
    check_engine(engine)
    prepared = prepared or model.card.get("prepared")
    if not prepared:
        raise ConfigError(f"{model.path}: the card records no prepared dataset; pass the PREPARED folder explicitly")
    with reading(prepared, "predict"):  # prepare cannot rewrite these shards meanwhile (a shared lock)
        dm = ChestXrayDataModule(
            prepared, batch_size=batch_size, num_workers=num_workers,
            in_chans=int(model.card["in_chans"]), normalization=model.card["normalization"], verify=verify,
            verify_splits=(split,),
        )
        if labels_fit:
            _check_prepared(model, dm.manifest, str(prepared))
        else:  # preprocessing must still match (size, resize, ...); the labels are mapped by the caller
            _check_prepared(model, {**dm.manifest, "labels": list(model.labels)}, str(prepared))
        backend = backend or bundle_backend(model, None if device is None else str(device), engine)
        scorer = Scorer(card=model.card, backend=backend, source=str(model.path), tta=tta)
        ids: list[str] = []
        patients: list[str] = []
        sources: list[str] = []
        digests: list[str] = []
        truth: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for batch in dm.split_dataloader(split, pixels=True):  # uint8 (B, 1, S, S) as prepare stored them
            pixels = batch["image"][:, 0].numpy()
            scores.append(scorer.score(pixels))
            truth.append(batch["labels"].numpy())
            ids.extend(batch["image_id"])
            patients.extend(batch["patient_id"])
            sources.extend(batch["source"])
            if hashes:
                digests.extend(pixel_hash(p) for p in pixels)
    truth_labels = list(model.labels) if labels_fit else list(dm.labels)
    log.info("predicted %d %s images of %s with tta=%s (%s)", len(ids), split, prepared, tta, scorer.backend.name)
    frame = _frame(ids, patients, truth_labels, np.concatenate(truth), np.concatenate(scores), list(model.labels))
    if any(sources):
        frame.insert(2, "source", sources)
    if hashes:
        frame.insert(2, "pixel_hash", digests)
    return frame


def _frame(ids: list[str], patients: list[str], labels: list[str], truth: np.ndarray, scores: np.ndarray,
           score_labels: list[str] | None = None) -> pd.DataFrame:
    """image_id, patient_id, the truth per label (uint8 0/1, or float with NaN where missing), p_<label>."""
    frame = pd.DataFrame({"image_id": ids, "patient_id": patients})
    frame[labels] = truth if np.isnan(truth).any() else truth.astype(np.uint8)
    frame[score_columns(score_labels or labels)] = scores.astype(np.float64)
    return frame


def torch_scorer(
    bundle: Bundle | str | Path, tta: str | None = None, device: str | torch.device | None = None
) -> Scorer:
    """A Scorer running a bundle's network (torch_backend) through the one scoring path: uint8 pixels (B, S, S) →
    card normalisation, TTA, sigmoid. tta None: the mode the stored thresholds were chosen with; another mode than
    theirs is refused."""
    model = as_bundle(bundle)
    scorer = make_scorer(model.card, torch_backend(model.net, model.card, device), str(model.path), tta)
    return with_ood(scorer, model.path)  # ood.safetensors + ood.json beside the weights, fitted by evaluate


def predict_images(
    bundle: Bundle | str | Path,
    paths: Iterable[str | Path],
    batch_size: int = 32,
    tta: str | None = None,
    device: str | torch.device | None = None,
    engine: str = "auto",
) -> pd.DataFrame:
    """Scores for image files (PNG/JPEG/DICOM), preprocessed as the bundle card says, on `engine`
    (chestxray.inference.engines: ONNX Runtime on the CPU by default).

    Returns one row per path, in order: path, image_id (file stem), status ('ok' or 'quarantined'),
    reason (why a file could not be used, else ''), and p_<label> (empty for quarantined files); a multiclass bundle
    adds predicted_class (argmax; thresholds do not apply). Use chestxray.inference.stream.iter_predictions to stream many files batch by batch.
    """
    scorer = bundle_scorer(as_bundle(bundle), tta=tta, device=None if device is None else str(device), engine=engine)
    frames = list(iter_predictions(scorer, [Path(p) for p in paths], batch_size=batch_size))
    if not frames:
        return pd.DataFrame(columns=[*ROW_COLUMNS, *score_columns(scorer.labels)])
    return pd.concat(frames, ignore_index=True)
