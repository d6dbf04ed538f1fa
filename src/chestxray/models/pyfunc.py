"""A bundle as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(...)` scores image paths or arrays.

The logged model carries the bundle folder (safetensors + card) as an artifact and this small wrapper; its
metadata holds the card's labels, thresholds and preprocessing. Input: a DataFrame with a `path` column (or a
list of paths) — files are decoded and resized exactly as `chestxray predict` does — or uint8 pixels (N, S, S) /
(S, S) already at the card's image size. Output: a DataFrame with one p_<label> column per finding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import DataError

log = logging.getLogger(__name__)

ARTIFACT = "bundle"
MODEL_NAME = "model"

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow(-skinny) is a dependency; keep the module importable anyway
    PythonModel = object  # type: ignore[assignment,misc]


class BundlePyfunc(PythonModel):
    """mlflow.pyfunc wrapper around a chestxray bundle."""

    def load_context(self, context: Any) -> None:
        from chestxray.models.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[ARTIFACT])

    def _pixels(self, model_input: Any) -> np.ndarray:
        from chestxray.data.imaging import load_square

        card = self.bundle.card
        size, resize = int(card["image_size"]), card.get("resize", "pad")
        if isinstance(model_input, np.ndarray) and model_input.dtype != object:
            pixels = model_input[None] if model_input.ndim == 2 else model_input
            if pixels.ndim != 3 or pixels.shape[1:] != (size, size):
                raise DataError(f"arrays must be uint8 (N, {size}, {size}) or ({size}, {size}); got {model_input.shape}")
            return pixels.astype(np.uint8, copy=False)
        if isinstance(model_input, pd.DataFrame):
            if "path" not in model_input:
                raise DataError(f"the input DataFrame needs a 'path' column; found {list(model_input.columns)}")
            paths = model_input["path"].tolist()
        else:
            paths = list(np.ravel(model_input)) if isinstance(model_input, np.ndarray) else list(model_input)
        return np.stack([load_square(Path(str(p)), size, resize) for p in paths])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        from chestxray.data.augment import normalize
        from chestxray.data.tasks import probabilities

        card = self.bundle.card
        pixels = torch.from_numpy(self._pixels(model_input)).unsqueeze(1)
        with torch.inference_mode():
            logits = self.bundle.net(normalize(pixels, int(card["in_chans"]), card["normalization"]))
            probs = probabilities(logits.float(), card.get("task")).numpy().astype(np.float64)
        return pd.DataFrame(probs, columns=[f"p_{x}" for x in self.bundle.labels])


def log_bundle_model(bundle_dir: str | Path, example: str | Path, register_as: str | None = None) -> Any:
    """Log the bundle as a pyfunc model into the active MLflow run (signature, input example, card metadata).

    `example` is an image file used as the input example; `register_as` also registers it in the model registry.
    Returns MLflow's ModelInfo.
    """
    import mlflow
    from mlflow.models import infer_signature

    from chestxray.models.bundle import read_card

    card = read_card(bundle_dir)
    wrapper = BundlePyfunc()
    example_frame = pd.DataFrame({"path": [str(example)]})
    columns = [f"p_{x}" for x in card["labels"]]
    signature = infer_signature(example_frame, pd.DataFrame(np.zeros((1, len(columns))), columns=columns))
    metadata = {k: card.get(k) for k in ("architecture", "labels", "thresholds", "threshold_method", "task",
                                          "image_size", "resize", "in_chans", "normalization")}
    import chestxray

    return mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=wrapper, artifacts={ARTIFACT: str(bundle_dir)}, signature=signature,
        input_example=example_frame, metadata=metadata, registered_model_name=register_as or None,
        pip_requirements=[f"chestxray=={chestxray.__version__}"],
    )
