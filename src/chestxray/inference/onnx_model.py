"""Run an exported ONNX model with onnxruntime: no torch at inference, the card read from the ONNX metadata.

onnx_backend plugs any onnxruntime session into the one scoring path (chestxray.inference.scoring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.errors import ModelError
from chestxray.inference.scoring import Backend, Scorer, make_scorer
from chestxray.inference.site import SITE_KEY, site_from_json, site_scorer

CARD_KEY = "chestxray_card"  # written by chestxray.deploy.onnx_export


def onnx_scorer(path: str | Path, tta: str | None = None) -> Scorer:
    """A Scorer for a .onnx file exported by `chestxray export` (uint8 pixels in, probabilities out), scoring
    through the one path (chestxray.inference.scoring). tta None: the mode the stored thresholds were chosen with;
    another mode than theirs is refused, and so is 'crop' on a uint8 graph."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("onnxruntime is not installed; pip install onnxruntime") from None
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX file not found; export one with 'chestxray export BUNDLE --onnx {path.name}'")
    try:
        session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for damaged files
        raise ModelError(f"{path}: not a loadable ONNX model ({' '.join(str(exc).split())[:300]}); "
                         "export it again") from None
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        raise ModelError(f"{path}: no chestxray card in the ONNX metadata; export the model with 'chestxray export'")
    card = json.loads(meta[CARD_KEY])
    scorer = make_scorer(card, onnx_backend(session), str(path), tta)
    if SITE_KEY not in meta:
        return scorer
    return site_scorer(scorer, site_from_json(meta[SITE_KEY], f"{path} (exported with --site)"))


def onnx_backend(session: Any) -> Backend:
    """The scoring Backend of an onnxruntime session whose graph takes grey levels (B, 1, S, S) and returns
    probabilities (the card's normalisation and sigmoid inside, as chestxray.deploy.onnx_export writes it).

    A uint8 input takes whole grey levels only (no 'crop' TTA); a float input takes any view."""
    entry = session.get_inputs()[0]
    dtype = np.uint8 if entry.type == "tensor(uint8)" else np.float32

    def forward(views: np.ndarray) -> np.ndarray:
        return session.run(None, {entry.name: np.ascontiguousarray(views, dtype=dtype)})[0]

    return Backend("onnxruntime", forward, whole_levels=dtype == np.uint8)
