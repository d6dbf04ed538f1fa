"""The one scoring path: every place that turns an image into a probability goes through this module.

    file ──load_pixels──▶ uint8 (S, S) ─┐                     ┌─ backend: normalise (card), network,
    array ─array_pixels─▶ uint8 (S, S) ─┼─▶ tta_views ─▶ views ┤  sigmoid / softmax ─▶ probabilities (B, L)
    prepared shard ─────▶ uint8 (S, S) ─┘   (card TTA)        └─ mean over the views (score_pixels)

Files are decoded and resized by chestxray.data.imaging.load_square (JPEG draft decode, the card's size and resize
mode), exactly as `prepare` stored the training data; arrays, already decoded, only go through fit_square. The
test-time augmentation is the one the stored thresholds were chosen with (threshold_tta). A Backend is the network
alone: PyTorch (chestxray.inference.predict.torch_backend) or ONNX Runtime (chestxray.inference.onnx_model); it
takes grey levels, so views are made once here for every backend. This module imports no torch.
Callers: evaluate, predict (bundle and .onnx), the MLflow pyfunc, serve and explain (see docs/scoring.md).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.errors import ConfigError, ModelError, clip
from chestxray.inference.tta import INTERPOLATED, TTA_MODES, check_tta

CROP_FRACTION = 0.875  # "crop"/"tencrop" TTA: side of the corner and centre crops, relative to the image


@dataclass(frozen=True)
class Backend:
    """A model's forward pass: float32 grey levels (B, 1, S, S) in [0, 255] → probabilities (B, L).

    The card's normalisation and the sigmoid (softmax for a multiclass card) happen inside. `whole_levels`: the
    backend takes whole grey levels only (an ONNX export with a uint8 input), so the interpolated 'crop' views
    cannot be fed to it. `tap`: opens a context in which every forward also appends, per OOD layer, its features
    (B, D) to the yielded {layer: list} (chestxray.inference.ood); None where the backend cannot read them."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    whole_levels: bool = False
    tap: Callable[[], AbstractContextManager[dict[str, list[np.ndarray]]]] | None = None


def threshold_tta(card: dict[str, Any], requested: str | None = None) -> str:
    """The test-time augmentation to score with: the one evaluate measured the model with (card threshold_tta).

    Thresholds fit the scores they were chosen on: with stored thresholds, no request means the stored mode and a
    different request is refused (ConfigError). Without thresholds (a multiclass card, or not yet evaluated) a
    request wins, else the stored mode, else 'none'. Cards from before threshold_tta existed mean 'none'.
    """
    stored = card.get("threshold_tta")
    if stored is not None and (not isinstance(stored, str) or stored not in TTA_MODES):
        raise ModelError(f"the card's threshold_tta {clip(repr(stored), 40)} is not one of {list(TTA_MODES)}; the card "
                         "is damaged or was edited: re-run 'chestxray evaluate RUN' or export the bundle again")
    if not card.get("thresholds"):
        return requested or stored or "none"
    stored = stored or "none"
    if requested is not None and requested != stored:
        raise ConfigError(
            f"the model's thresholds were chosen on validation scores made with --tta {stored}; scoring with "
            f"--tta {requested} would apply them to differently distributed scores. Use --tta {stored} (or leave "
            f"--tta out), or re-choose them: chestxray evaluate RUN --tta {requested}"
        )
    return stored


def load_pixels(path: str | Path, card: dict[str, Any], max_pixels: int | None = None) -> np.ndarray:
    """One image file → uint8 (S, S) as the card's model expects: the decode and resize `prepare` uses.

    Missing, empty and unreadable files raise DataError in words; `max_pixels` None keeps the decoders' limit."""
    from chestxray.data.imaging import DEFAULT_MAX_PIXELS, load_square
    from chestxray.inference.inputs import check_input_file

    check_input_file(Path(path))
    return load_square(path, int(card["image_size"]), card.get("resize", "pad"),
                       max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)


def pixel_hash(pixels: np.ndarray) -> str:
    """A short content hash of one image's model-input pixels, uint8 (S, S): the same image decoded and resized
    the same way (by prepare or by load_pixels) hashes the same; used to find evaluation images a model trained on."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(), digest_size=12).hexdigest()


def array_pixels(gray: np.ndarray, card: dict[str, Any]) -> np.ndarray:
    """A decoded uint8 (H, W) image → uint8 (S, S) with the card's size and resize mode (fit_square).

    The array is taken at its own resolution: a JPEG decoded in full differs from load_pixels' draft decode by
    the few grey levels chestxray.data.imaging.DRAFT_TOLERANCE states; PNG and DICOM pixels are the same."""
    from chestxray.data.imaging import fit_square

    return fit_square(gray, int(card["image_size"]), card.get("resize", "pad"))


def _stretch(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float32 (H', W') to (H, W) with half-pixel centres (as torch's align_corners=False)."""
    import cv2

    return cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _five_crops(images: np.ndarray) -> list[np.ndarray]:
    """The four corner crops and the centre crop (side CROP_FRACTION) of float32 (B, 1, S, S), stretched back to S."""
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    return [np.stack([_stretch(np.ascontiguousarray(image[0, t:t + ch, s:s + cw]), (h, w))[None]
                      for image in images]) for t, s in corners]


def tta_views(pixels: np.ndarray, tta: str) -> list[np.ndarray]:
    """uint8 (B, S, S) → the views whose probabilities are averaged, each float32 (B, 1, S, S) grey levels:
    the image ('none'), with its mirror ('hflip'), with its four corner and centre crops stretched back to S
    ('crop', side CROP_FRACTION), or those five crops and their mirrors ('tencrop': torchvision's TenCrop, as the
    CheXNet reproductions score; written here because this module stays torch-free for the ONNX path)."""
    check_tta(tta)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise ConfigError(f"scoring expects uint8 pixels (B, S, S), got {pixels.dtype} {pixels.shape}")
    images = pixels.astype(np.float32)[:, None]
    if tta == "hflip":
        return [images, np.ascontiguousarray(images[..., ::-1])]
    if tta == "crop":
        return [images, *_five_crops(images)]
    if tta == "tencrop":
        crops = _five_crops(images)
        return [*crops, *(np.ascontiguousarray(c[..., ::-1]) for c in crops)]
    return [images]


def check_backend_tta(backend: Backend, tta: str, source: str = "") -> None:
    """Refuse an unknown TTA mode, and 'crop'/'tencrop' on a backend that takes whole grey levels only (ConfigError)."""
    check_tta(tta)
    if backend.whole_levels and tta in INTERPOLATED:
        raise ConfigError(f"{source or 'the model'}: this {backend.name} model takes whole grey levels (uint8 "
                          f"input), and --tta {tta} feeds it interpolated views; use --tta none or hflip, or the "
                          f"bundle for {tta}")


def score_pixels(pixels: np.ndarray, backend: Backend, tta: str = "none") -> np.ndarray:
    """Probabilities float64 (B, L) for uint8 images (B, S, S): the backend's mean over the TTA views."""
    check_backend_tta(backend, tta)
    views = tta_views(pixels, tta)
    return np.mean([np.asarray(backend.forward(view), dtype=np.float64) for view in views], axis=0)


@dataclass(frozen=True)
class Scorer:
    """A model ready to score: its card (labels, image_size, resize, thresholds …), a backend, the TTA it applies
    and where it came from. Build it with make_scorer so the TTA matches the stored thresholds. `calibrate`: a map
    of the averaged probabilities (N, L) → (N, L) applied last, e.g. a site profile (chestxray.inference.site).
    `ood`: reads the network's features during those forwards to say how typical of the training images an input
    is (chestxray.inference.ood; bundles with a reference only)."""

    card: dict[str, Any]
    backend: Backend
    source: str
    tta: str = "none"
    calibrate: Callable[[np.ndarray], np.ndarray] | None = None
    ood: Any = None  # an OodProbe (chestxray.inference.ood) on the backend's tap: features of the same forwards

    @property
    def false_alarm(self) -> float | None:
        """Inputs scored at or below it are marked unusual (None: the model has no OOD reference)."""
        return None if self.ood is None else self.ood.reference.rate

    def __post_init__(self) -> None:
        check_backend_tta(self.backend, self.tta, self.source)

    @property
    def labels(self) -> list[str]:
        return list(self.card["labels"])

    @property
    def thresholds(self) -> dict[str, float] | None:
        return self.card.get("thresholds")

    def score(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities float64 (B, L) for uint8 model inputs (B, S, S) (load_pixels / array_pixels / shards)."""
        probs = score_pixels(pixels, self.backend, self.tta)
        return probs if self.calibrate is None else self.calibrate(probs)

    def score_with_ood(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (B, L) and in-distribution scores (B,) from the same forward passes (None without an OOD
        reference)."""
        if self.ood is None:
            return self.score(pixels), None
        with self.ood.tap() as store:
            probs = self.score(pixels)
        return probs, self.ood.scores(store, self.tta)

    def score_files(self, paths: list[str | Path]) -> np.ndarray:
        """Probabilities (N, L) for image files (DataError on the first unusable one; see iter_predictions for
        batches that quarantine bad files and go on)."""
        return self.score(np.stack([load_pixels(p, self.card) for p in paths]))

    def score_arrays(self, images: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, L) for decoded uint8 (H, W) images of any size."""
        return self.score(np.stack([array_pixels(image, self.card) for image in images]))


def make_scorer(card: dict[str, Any], backend: Backend, source: str, tta: str | None = None) -> Scorer:
    """A Scorer applying `tta`, or the card's stored mode when None (threshold_tta: a mode other than the stored
    thresholds' is refused)."""
    return Scorer(card=card, backend=backend, source=source, tta=threshold_tta(card, tta))
