"""A bundle as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(...)` scores image paths or arrays.

The logged model carries the bundle folder (safetensors + card) as an artifact and this small wrapper; its
metadata holds the card's labels, thresholds and preprocessing. Input, through the ordinary `predict`:
  - image files: a DataFrame with one `path` column, or a numpy array of path strings — decoded and resized
    exactly as `chestxray predict` does;
  - pixels: a numpy array of decoded images of any size, (H, W) for one image, (N, H, W), or (N, H, W, C) /
    (H, W, C) with C = 1, 3 (RGB, converted to gray as Pillow does) or 4 (alpha dropped); uint8 as is, floats in
    [0, 1] scaled by 255, floats in [0, 255] rounded, anything else (16-bit, other ranges) stretched by each
    image's own min/max as 16-bit files are; then resized like a decoded file.
A plain Python list is refused by MLflow's schema check for such a signature: pass np.asarray(paths).
Output: a DataFrame with one p_<label> column per finding.

The signature is one free-form tensor (dtype object, shape (-1,)): MLflow passes any array, and a one-column
DataFrame as an array of its values, without reshaping; a column signature would refuse (N, H, W) arrays.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import DataError

log = logging.getLogger(__name__)

ARTIFACT = "bundle"
MODEL_NAME = "model"
INPUT_NOTE = ("image paths (a DataFrame with a 'path' column, or np.asarray of path strings) or pixels (numpy "
              "(H, W), (N, H, W) or (N, H, W, 1|3|4); uint8, or floats in [0, 1] or [0, 255]) of any size")
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
    """mlflow.pyfunc wrapper around a chestxray bundle.

    The logged model carries an explicit signature (see `signature`), so MLflow's checks of predict's type hints are
    off: `_skip_type_hint_validation` is MLflow's own switch for classes that opt out (it warns at import otherwise,
    with raw colour codes), and `model_input` has no hint, from which MLflow would try (and fail, with a warning) to
    infer a second signature when the model is logged. Neither notice is one a user could act on."""

    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from chestxray.models.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[ARTIFACT])

    def _pixels(self, model_input: Any) -> np.ndarray:
        """uint8 (N, S, S) model inputs from paths or pixel arrays, made as `chestxray predict` makes them."""
        from chestxray.data.imaging import fit_square, load_square

        card = self.bundle.card
        size, resize = int(card["image_size"]), card.get("resize", "pad")
        paths = _paths(model_input)
        if paths is not None:
            return np.stack([load_square(Path(p), size, resize) for p in paths])
        if not isinstance(model_input, np.ndarray):
            raise DataError(f"cannot score a {type(model_input).__name__}; pass {INPUT_NOTE}")
        if model_input.dtype == object:  # images of different sizes, one array each
            images = [image for part in model_input for image in array_images(np.asarray(part))]
        else:
            images = array_images(model_input)
        return np.stack([fit_square(image, size, resize) for image in images])

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        import torch

        from chestxray.data.augment import normalize
        from chestxray.data.tasks import probabilities

        card = self.bundle.card
        pixels = torch.from_numpy(self._pixels(model_input)).unsqueeze(1)
        with torch.inference_mode():
            logits = self.bundle.net(normalize(pixels, int(card["in_chans"]), card["normalization"]))
            probs = probabilities(logits.float(), card.get("task")).numpy().astype(np.float64)
        return pd.DataFrame(probs, columns=[f"p_{x}" for x in self.bundle.labels])


def signature(labels: list[str]) -> Any:
    """Input: one free-form tensor (paths or pixels, see the module notes); output: a double per p_<label>."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
                          outputs=Schema([ColSpec("double", f"p_{x}") for x in labels]))


class _DropMessages(logging.Filter):
    """Drops log records whose message contains one of the given parts."""

    def __init__(self, *parts: str) -> None:
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.getMessage() for part in self.parts)


@contextlib.contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """While our wrapper is logged, hide MLflow's CloudPickle notice, which no user can act on (the wrapper is our
    own class, and the weights travel as a safetensors bundle beside it). Scoped to this call and this message:
    anything else MLflow says, here or elsewhere, still shows."""
    quiet = _DropMessages("serialized using CloudPickle")
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def log_bundle_model(bundle_dir: str | Path, example: str | Path, register_as: str | None = None) -> Any:
    """Log the bundle as a pyfunc model into the active MLflow run (signature, input example, card metadata).

    `example` is an image file used as the input example; `register_as` also registers it in the model registry.
    Returns MLflow's ModelInfo.
    """
    import mlflow

    from chestxray.models.bundle import read_card

    card = read_card(bundle_dir)
    metadata = {k: card.get(k) for k in ("architecture", "labels", "thresholds", "threshold_method", "task",
                                          "image_size", "resize", "in_chans", "normalization")}
    import chestxray

    with _quiet_model_logging():
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=BundlePyfunc(), artifacts={ARTIFACT: str(bundle_dir)},
            signature=signature(list(card["labels"])), input_example=np.array([str(example)], dtype=object),
            metadata={**metadata, "input": INPUT_NOTE}, registered_model_name=register_as or None,
            pip_requirements=[f"chestxray=={chestxray.__version__}"],
        )
