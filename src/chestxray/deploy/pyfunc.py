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
  - image file bytes: `bytes` objects, or strings holding the file base64-encoded (plain or as a data: URL) —
    decoded in memory exactly as serve decodes uploads (content, size and pixel checks of chestxray.deploy.uploads).
A plain Python list is refused by MLflow's schema check for such a signature: pass np.asarray(paths).
Output: a DataFrame with one p_<label> column per finding.

Paths are a convenience for a caller who shares the model's filesystem. Served (`mlflow models serve`, or any
MLflow serving environment) a string is never a path: it is base64 image bytes, unless the model is loaded with
model_config {"image_root": FOLDER} (SERVING_MODEL_CONFIG for `mlflow models serve`), in which case paths inside
that folder are scored and any other is refused with the same words whether it exists or not; and errors never
quote a file's content. model_config {"allow_paths": "false"} refuses paths in process too ("true": served too).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.deploy.uploads import Limits, UploadError, decode_upload
from chestxray.errors import DataError
from chestxray.models.pyfunc import ARTIFACT, INPUT_NOTE

_CHANNELS = (1, 3, 4)
SERVING_FLAGS = ("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "IS_IN_DB_MODEL_SERVING_ENV")  # set by MLflow's servers
NO_PATHS = ("this model takes images, not paths, when served: send each image file base64-encoded (or a "
            "data: URL), or pixel arrays; or serve it with model_config image_root to score files in one folder")
_DATA_URL = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.I)

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


def serving() -> bool:
    """True inside an MLflow model server (MLflow sets its own flag; Databricks serving sets another)."""
    return any(os.environ.get(flag, "").lower() in ("true", "1") for flag in SERVING_FLAGS)


def image_bytes(text: str) -> bytes | None:
    """The file bytes a base64 string or data: URL holds, or None when it is neither."""
    payload = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(payload, validate=True) if payload else None
    except (binascii.Error, ValueError):
        return None


def inside(path: str, root: str) -> Path | None:
    """`path` (relative paths from `root`) when it resolves inside `root` (symlinks followed), else None."""
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, path))
    return Path(full) if os.path.commonpath([base, full]) == base else None


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


def _head(path: Path, size: int) -> bytes:
    """At most `size` bytes of a file (a file over the upload limit is refused without being read whole)."""
    with open(path, "rb") as fh:
        return fh.read(size)


def _blobs(model_input: Any) -> list[bytes] | None:
    """Image files as bytes: bytes objects, or data: URLs (base64 strings without the prefix are paths or blobs
    depending on where the model runs: see BundlePyfunc._score_paths); None when the input holds none."""
    values = model_input.iloc[:, 0].tolist() if isinstance(model_input, pd.DataFrame) and \
        len(model_input.columns) == 1 else model_input
    if isinstance(values, np.ndarray) and values.dtype == object:
        values = list(np.ravel(values))
    if not isinstance(values, (list, tuple)) or not values:
        return None
    if all(isinstance(v, (bytes, bytearray)) for v in values):
        return [bytes(v) for v in values]
    if all(isinstance(v, str) and _DATA_URL.match(v.strip()) for v in values):
        return [image_bytes(v) or b"" for v in values]
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
        from chestxray.inference.engines import bundle_scorer

        # the TTA the stored thresholds were chosen with, on the CPU through the bundle's ONNX graph (cached beside
        # it when evaluate ran, so the artifact carries it; else exported now), PyTorch where it cannot be exported
        self.scorer = bundle_scorer(context.artifacts[ARTIFACT], device="cpu")
        config = getattr(context, "model_config", None) or {}
        self.image_root = str(config["image_root"]) if config.get("image_root") else None
        allow = str(config.get("allow_paths", "auto")).strip().lower()
        self.allow_paths = None if allow == "auto" else allow in ("true", "1", "yes")  # None: in process, not served

    def _score(self, model_input: Any) -> np.ndarray:
        """Probabilities (N, L) for paths, file bytes or pixel arrays, made as `chestxray predict` makes them."""
        blobs = _blobs(model_input)
        if blobs is not None:
            return self._score_bytes(blobs)
        paths = _paths(model_input)
        if paths is not None:
            return self._score_paths(paths)
        if not isinstance(model_input, np.ndarray):
            raise DataError(f"cannot score a {type(model_input).__name__}; pass {INPUT_NOTE}")
        if model_input.dtype == object:  # images of different sizes, one array each
            images = [image for part in model_input for image in array_images(np.asarray(part))]
        else:
            images = array_images(model_input)
        return self.scorer.score_arrays(images)

    def _score_paths(self, paths: list[str]) -> np.ndarray:
        """Files by path, where this model may read paths: in process, or inside the configured image_root."""
        served = serving()
        if self.image_root is None and (self.allow_paths is False or (served and self.allow_paths is None)):
            decoded = [image_bytes(p) for p in paths]
            if self.allow_paths is not False and all(b is not None for b in decoded):
                return self._score_bytes(decoded)  # served: the strings are base64 image files
            raise DataError(NO_PATHS)
        if self.image_root is None:
            return self.scorer.score_files([Path(p) for p in paths])
        files = [inside(p, self.image_root) for p in paths]
        if any(f is None for f in files):
            raise DataError(f"only files inside the configured image_root may be scored ({len(paths)} path(s) "
                            "given); send the image bytes instead")
        from chestxray.inference.inputs import check_input_file

        for file in files:
            try:
                check_input_file(file)
            except DataError:
                raise DataError(f"{os.path.relpath(file, os.path.realpath(self.image_root))}: no readable image "
                                "file there (inside image_root)") from None
        return self._score_bytes([_head(f, Limits().max_bytes + 1) for f in files], served)

    def _score_bytes(self, blobs: list[bytes], quiet: bool | None = None) -> np.ndarray:
        """Image files given as bytes, decoded in memory as serve decodes uploads; served, errors quote no content."""
        card, quiet = self.scorer.card, serving() if quiet is None else quiet
        squares = []
        for i, blob in enumerate(blobs):
            try:
                squares.append(decode_upload(blob, f"image {i}", int(card["image_size"]), card.get("resize", "pad"),
                                             Limits())[1])
            except UploadError as exc:
                words = {415: "not a PNG, JPEG or DICOM file (a served model takes base64 image files, not paths)",
                         422: "damaged or unreadable image"}
                raise DataError(f"image {i}: {words[exc.status]}" if quiet and exc.status in words else exc.reason
                                ) from None
        return self.scorer.score(np.stack(squares))

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        return pd.DataFrame(self._score(model_input), columns=[f"p_{x}" for x in self.scorer.labels])
