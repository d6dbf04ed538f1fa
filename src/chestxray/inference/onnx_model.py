"""Run an exported ONNX model with onnxruntime: no torch at inference, the card read from the ONNX metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chestxray.errors import ConfigError, ModelError
from chestxray.inference.stream import Scorer, threshold_tta

CARD_KEY = "chestxray_card"  # written by chestxray.deploy.onnx_export


def onnx_scorer(path: str | Path, tta: str | None = None) -> Scorer:
    """A Scorer for a .onnx file exported by `chestxray export` (uint8 pixels in, probabilities out).

    tta None: the mode the stored thresholds were chosen with; another mode than theirs is refused."""
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
    tta = threshold_tta(card, tta)
    if tta not in ("none", "hflip"):
        raise ConfigError(f"an ONNX model supports --tta none or hflip, not {tta!r}; use the bundle for {tta!r}")
    name = session.get_inputs()[0].name

    def score(pixels: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(pixels[:, None], dtype=np.uint8)
        probs = session.run(None, {name: batch})[0]
        if tta == "hflip":
            probs = (probs + session.run(None, {name: np.ascontiguousarray(batch[..., ::-1])})[0]) / 2
        return probs.astype(np.float64)

    return Scorer(card=card, score=score, source=str(path), tta=tta)
