"""Fit a bundle's out-of-distribution reference on its own prepared data: training features, validation scale.

Called by `chestxray evaluate` (which scores the validation split anyway): the training split's penultimate features
(chestxray.inference.ood.feature_tap, through the same scoring path as every prediction) give a Gaussian per layer,
the validation split's give the distances and statistics the score is read against. Written beside the weights
(ood.safetensors + ood.json); the weights and the card are not touched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.inference.ood import (
    FALSE_ALARM,
    TTA_VIEWS,
    OodReference,
    fit_reference,
    mean_over_views,
    save_reference,
)
from chestxray.inference.scoring import Backend

log = logging.getLogger(__name__)


def split_features(bundle: Any, prepared: str | Path, split: str, tta: str = "none", batch_size: int = 64,
                   backend: Backend | None = None) -> dict[str, np.ndarray]:
    """Features {layer: (N, D)} of a prepared split, in stored order, averaged over the TTA views, read by the
    backend's tap (the ONNX graph's feature outputs or chestxray.inference.ood.feature_tap's hooks)."""
    from chestxray.inference.predict import predict_split, torch_backend

    if backend is None or backend.tap is None:
        backend = torch_backend(bundle.net, bundle.card, "cpu")
    with backend.tap() as store:
        predict_split(bundle, prepared, split, batch_size=batch_size, tta=tta, backend=backend)
    return mean_over_views(store, TTA_VIEWS[tta])


def fit_ood(bundle: Any, prepared: str | Path | None = None, tta: str = "none", false_alarm: float = FALSE_ALARM,
            batch_size: int = 64, backend: Backend | None = None) -> OodReference:
    """Fit and store the OOD reference of a bundle from its prepared train and val splits; returns it. `backend`:
    the one evaluate scored with, when it can read features (else PyTorch on the CPU)."""
    prepared = prepared or bundle.card.get("prepared")
    train = split_features(bundle, prepared, "train", tta, batch_size, backend)
    val = split_features(bundle, prepared, "val", tta, batch_size, backend)
    ref = fit_reference(train, val, false_alarm, {"tta": tta, "prepared": str(prepared)})
    save_reference(ref, bundle.path)
    if ref.rate > ref.false_alarm:
        log.warning("only %d validation images: the OOD false-alarm rate in force is %.1f%% instead of %.1f%% (an input "
                    "is marked unusual when it is more unusual than every validation image)", ref.info["n_val"],
                    100 * ref.rate, 100 * ref.false_alarm)
    log.info("OOD reference: %s train / %s val images, layers %s", ref.info["n_train"], ref.info["n_val"],
             ref.info["layers"])
    return ref
