"""Run an exported ONNX model with onnxruntime: no torch at inference, the card read from the ONNX metadata.

onnx_backend plugs any onnxruntime session into the one scoring path (chestxray.inference.scoring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.data.tasks import log_odds_of
from chestxray.errors import ModelError
from chestxray.inference.scoring import Backend, Scorer, make_scorer

CARD_KEY = "chestxray_card"  # written by chestxray.deploy.onnx_export
LOGITS = "logits"  # the graph's second output (chestxray.deploy.onnx_export.LOGITS)


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
    return make_scorer(card, onnx_backend(session, card.get("task")), str(path), tta)


def onnx_backend(session: Any, task: str | None = None) -> Backend:
    """The scoring Backend of an onnxruntime session whose graph takes grey levels (B, 1, S, S) and returns
    probabilities and logits (the card's normalisation inside, as chestxray.deploy.onnx_export writes it): the
    logits output; an export without one gives the log-odds of its probabilities (tied where they saturate).

    A uint8 input takes whole grey levels only (no 'crop' TTA); a float input takes any view."""
    entry = session.get_inputs()[0]
    dtype = np.uint8 if entry.type == "tensor(uint8)" else np.float32
    names = [o.name for o in session.get_outputs()]
    output = LOGITS if LOGITS in names else names[0]

    def forward(views: np.ndarray) -> np.ndarray:
        values = session.run([output], {entry.name: np.ascontiguousarray(views, dtype=dtype)})[0]
        return values if output == LOGITS else log_odds_of(values)

    return Backend("onnxruntime", forward, whole_levels=dtype == np.uint8, task=task,
                   gives="logits" if output == LOGITS else "log_odds")
