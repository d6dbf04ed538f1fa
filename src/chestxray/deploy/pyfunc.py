"""A bundle as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(...)` scores image paths or arrays.

The logged model carries the bundle folder (safetensors + card) as an artifact and this wrapper as code (MLflow
"models from code": chestxray.deploy.pyfunc_code, nothing pickled; logged by chestxray.models.pyfunc); its
metadata holds the card's labels, thresholds, the test-time augmentation they were chosen with and the
preprocessing. Scores go through the one scoring path (chestxray.inference.scoring), with the stored TTA, as
`chestxray predict`, evaluate and serve do. Input, through the ordinary `predict`:
  - image files: a DataFrame with one `path` column, or a numpy array of path strings — decoded and resized
    exactly as `chestxray predict` does (load_square, JPEG draft decode);
  - pixels: a numpy array of decoded images of any size, (H, W) for one image, (N, H, W), or (N, H, W, C) /
    (H, W, C) with C = 1, 3 (RGB, converted to gray as Pillow does) or 4 (alpha dropped); uint8 as is, floats in
    [0, 1] scaled by 255, floats in [0, 255] rounded, anything else (16-bit, other ranges) stretched by each
    image's own min/max as 16-bit files are; then resized like a decoded file (fit_square). Pixels are taken as
    given: a JPEG the caller decoded in full differs slightly from the draft decode of its file (see
    chestxray.data.imaging.DRAFT_TOLERANCE); PNG and DICOM pixels score exactly as their files.
A plain Python list is refused by MLflow's schema check for such a signature: pass np.asarray(paths).
Output: a DataFrame with one p_<label> column per finding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import DataError
from chestxray.models.pyfunc import ARTIFACT, INPUT_NOTE

_CHANNELS = (1, 3, 4)

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow(-skinny) is a dependency; keep the module importable anyway
    PythonModel = object  # type: ignore[assignment,misc]


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """One image's values as uint8: uint8 as is, floats in [0, 1] × 255, floats in [0, 255] rounded, else stretched."""
    from chestxray.data.imaging import to_uint8

    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "f" and np.isfinite(image).all():
        lo, hi = float(image.min()), float(image.max())
        if lo >= 0 and hi <= 255:
            scaled = image * 255.0 if hi <= 1 else image
            return np.rint(scaled).astype(np.uint8)
    return to_uint8(image)


def _gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) → uint8 (H, W) gray, colour converted by the file decoders' own rule."""
    from PIL import Image

    from chestxray.data.imaging import pil_to_gray

    image = _as_uint8(np.asarray(image))
    if image.ndim == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    return pil_to_gray(Image.fromarray(np.ascontiguousarray(image), "RGB" if image.shape[-1] == 3 else "RGBA"))


def array_images(pixels: np.ndarray) -> list[np.ndarray]:
    """Split a numeric array into uint8 (H, W) images: (H, W), (H, W, C), (N, H, W) or (N, H, W, C), C in 1, 3, 4."""
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in _CHANNELS):
        stack = [pixels]
    elif pixels.ndim == 3 or (pixels.ndim == 4 and pixels.shape[-1] in _CHANNELS):
        stack = list(pixels)
    else:
        raise DataError(f"pixel arrays must be (H, W), (N, H, W) or (N, H, W, C) with C in {_CHANNELS}; got "
                        f"{pixels.dtype} {pixels.shape}; pass images as uint8 or floats, or pass their paths")
    if not stack or min(stack[0].shape[:2]) < 1:
        raise DataError(f"pixel array {pixels.shape} holds no image")
    return [_gray(image) for image in stack]


def _paths(model_input: Any) -> list[str] | None:
    """The paths in `model_input` (DataFrame, string array, list), or None when it holds pixels."""
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input:
            return [str(p) for p in model_input["path"]]
        if len(model_input.columns) != 1:
            raise DataError(f"the input DataFrame needs a 'path' column; found {list(model_input.columns)}")
        model_input = model_input.iloc[:, 0].to_numpy()
    if isinstance(model_input, (list, tuple)):
        model_input = np.asarray(model_input, dtype=object if all(isinstance(v, (str, Path)) for v in model_input)
                                 else None)
    if isinstance(model_input, np.ndarray) and (model_input.dtype.kind in "US" or (
            model_input.dtype == object and all(isinstance(v, (str, Path)) for v in np.ravel(model_input)))):
        return [str(p) for p in np.ravel(model_input)]
    return None


class BundlePyfunc(PythonModel):
    """mlflow.pyfunc wrapper around a chestxray bundle, scoring through the one scoring path.

    The logged model carries an explicit signature (chestxray.models.pyfunc.signature), so MLflow's checks of
    predict's type hints are off: `_skip_type_hint_validation` is MLflow's own switch for classes that opt out (it
    warns at import otherwise, with raw colour codes), and `model_input` has no hint, from which MLflow would try
    (and fail, with a warning) to infer a second signature when the model is logged. Neither notice is one a user
    could act on."""

    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from chestxray.inference.predict import torch_scorer
        from chestxray.models.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[ARTIFACT])
        self.scorer = torch_scorer(self.bundle, device="cpu")  # the TTA the stored thresholds were chosen with

    def _score(self, model_input: Any) -> np.ndarray:
        """Probabilities (N, L) for paths or pixel arrays, made as `chestxray predict` makes them."""
        paths = _paths(model_input)
        if paths is not None:
            return self.scorer.score_files([Path(p) for p in paths])
        if not isinstance(model_input, np.ndarray):
            raise DataError(f"cannot score a {type(model_input).__name__}; pass {INPUT_NOTE}")
        if model_input.dtype == object:  # images of different sizes, one array each
            images = [image for part in model_input for image in array_images(np.asarray(part))]
        else:
            images = array_images(model_input)
        return self.scorer.score_arrays(images)

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        return pd.DataFrame(self._score(model_input), columns=[f"p_{x}" for x in self.bundle.labels])
