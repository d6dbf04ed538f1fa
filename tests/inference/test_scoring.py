"""The one scoring path's parts: TTA views (checked against torch's own interpolation), the stored-TTA rule, the
mean over views, the calibration step, whole-grey-level backends, and files vs arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chestxray.errors import ConfigError
from chestxray.inference.scoring import (
    CROP_FRACTION,
    Backend,
    Scorer,
    array_pixels,
    load_pixels,
    make_scorer,
    score_pixels,
    threshold_tta,
    tta_views,
)

CARD = {"labels": ["a", "b"], "image_size": 32, "resize": "crop"}


def _brightness(views: np.ndarray) -> np.ndarray:
    """A real (if simple) backend: the left half's and the right half's mean grey level, as probabilities."""
    half = views.shape[-1] // 2
    return np.stack([views[..., :half].mean((1, 2, 3)), views[..., half:].mean((1, 2, 3))], axis=1) / 255.0


@pytest.mark.parametrize("size", [32, 33, 64])
def test_views_match_torch_and_mirror_exactly(size: int) -> None:
    pixels = np.random.default_rng(size).integers(0, 256, (3, size, size), dtype=np.uint8)
    plain, mirrored = tta_views(pixels, "hflip")
    assert plain.dtype == np.float32 and plain.shape == (3, 1, size, size)
    np.testing.assert_array_equal(mirrored[:, 0], pixels[..., ::-1])
    x = torch.from_numpy(pixels).float()[:, None]
    ch = cw = round(size * CROP_FRACTION)
    corners = [(0, 0), (0, size - cw), (size - ch, 0), (size - ch, size - cw), ((size - ch) // 2, (size - cw) // 2)]
    crops = tta_views(pixels, "crop")
    assert len(crops) == 6 and np.array_equal(crops[0], plain)
    for view, (t, s) in zip(crops[1:], corners):  # bilinear, half-pixel centres, as torch's align_corners=False
        ref = F.interpolate(x[..., t:t + ch, s:s + cw], size=(size, size), mode="bilinear", align_corners=False)
        assert np.abs(view - ref.numpy()).max() < 1e-3  # grey levels out of 255
    with pytest.raises(ConfigError, match="unknown test-time augmentation 'rot90'"):
        tta_views(pixels, "rot90")
    with pytest.raises(ConfigError, match=r"uint8 pixels \(B, S, S\)"):
        tta_views(pixels.astype(np.float32), "none")


@pytest.mark.parametrize("size", [32, 64])
def test_tencrop_is_torchvisions_ten_crop(size: int) -> None:
    """Ten-crop as the CheXNet reproductions score: torchvision's TenCrop of a 0.875 window (the five crops and the
    five crops of the mirrored image), each stretched back to the input size; the same ten views, in another order."""
    from torchvision.transforms import functional as TF

    pixels = np.random.default_rng(size).integers(0, 256, (2, size, size), dtype=np.uint8)
    ours = tta_views(pixels, "tencrop")
    assert len(ours) == 10 and all(v.shape == (2, 1, size, size) for v in ours)
    x = torch.from_numpy(pixels).float()[:, None]
    crop = round(size * CROP_FRACTION)
    theirs = [F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False).numpy()
              for v in TF.ten_crop(x, [crop, crop])]
    unmatched = list(range(10))
    for view in theirs:
        gaps = [np.abs(view - ours[i]).max() for i in unmatched]
        best = int(np.argmin(gaps))
        assert gaps[best] < 1e-3, gaps  # grey levels out of 255
        unmatched.pop(best)
    assert not unmatched
    backend = Backend("numpy", _brightness)
    mean = np.mean([_brightness(v) for v in theirs], axis=0)
    assert np.abs(score_pixels(pixels, backend, "tencrop") - mean).max() < 1e-5
    with pytest.raises(ConfigError, match="--tta tencrop feeds it interpolated views"):
        score_pixels(pixels, Backend("onnxruntime", _brightness, whole_levels=True), "tencrop")


def test_probabilities_are_the_mean_over_views_then_the_calibration() -> None:
    pixels = np.zeros((2, 4, 4), dtype=np.uint8)
    pixels[:, :, :2] = 255  # left half white: the mirror swaps the halves
    backend = Backend("numpy", _brightness)
    assert score_pixels(pixels, backend, "none").tolist() == [[1.0, 0.0]] * 2
    assert score_pixels(pixels, backend, "hflip").tolist() == [[0.5, 0.5]] * 2
    calibrated = Scorer(CARD, backend, "test", "hflip", calibrate=lambda p: p ** 2)
    assert calibrated.score(pixels).tolist() == [[0.25, 0.25]] * 2


def test_stored_tta_rule() -> None:
    evaluated = {"thresholds": {"a": 0.3}, "threshold_tta": "hflip"}
    assert threshold_tta(evaluated) == threshold_tta(evaluated, "hflip") == "hflip"
    with pytest.raises(ConfigError, match="chosen on validation scores made with --tta hflip"):
        threshold_tta(evaluated, "none")
    assert threshold_tta({"thresholds": {"a": 0.3}}) == "none"  # a card from before threshold_tta
    assert threshold_tta({}) == "none" and threshold_tta({}, "crop") == "crop"  # not evaluated yet
    multiclass = {"thresholds": None, "threshold_tta": "hflip"}  # argmax: the measured TTA is the default only
    assert threshold_tta(multiclass) == "hflip" and threshold_tta(multiclass, "none") == "none"
    assert make_scorer({**CARD, **evaluated}, Backend("numpy", _brightness), "test").tta == "hflip"


def test_whole_level_backends_refuse_interpolated_views() -> None:
    uint8_only = Backend("onnxruntime", _brightness, whole_levels=True)
    assert Scorer(CARD, uint8_only, "model.onnx", "hflip").tta == "hflip"
    with pytest.raises(ConfigError, match="model.onnx: this onnxruntime model takes whole grey levels"):
        Scorer(CARD, uint8_only, "model.onnx", "crop")
    with pytest.raises(ConfigError, match="use --tta none or hflip"):
        score_pixels(np.zeros((1, 8, 8), np.uint8), uint8_only, "crop")


def test_files_and_arrays_meet_in_the_same_pixels(shared_data: Path) -> None:
    """A PNG's file and its decoded array give the same model input; a DICOM's too."""
    from chestxray.data.imaging import load_gray

    for path in (sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[0],
                 sorted((shared_data / "cxr-dicom-samples").glob("*.dcm"))[0]):
        np.testing.assert_array_equal(load_pixels(path, CARD), array_pixels(load_gray(path), CARD))
    scorer = Scorer(CARD, Backend("numpy", _brightness), "test")
    png = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[:2]
    np.testing.assert_array_equal(scorer.score_files(png), scorer.score_arrays([load_gray(p) for p in png]))


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_the_card_geometry_wins_over_the_default(tmp_path: Path, mode: str) -> None:
    """A bundle trained before stretch became prepare's default (card resize 'crop') is still scored with crop: files
    and arrays go through the card's mode, and each mode gives different pixels on a wide image."""
    from PIL import Image

    from chestxray.data.imaging import fit_square

    wide = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (24, 1))  # 48 x 24, a gradient left to right
    wide[:, :6] = 255
    Image.fromarray(wide, "L").save(tmp_path / "wide.png")
    card = {**CARD, "image_size": 16, "resize": mode}
    expected = fit_square(wide, 16, mode)
    np.testing.assert_array_equal(load_pixels(tmp_path / "wide.png", card), expected)
    np.testing.assert_array_equal(array_pixels(wide, card), expected)
    others = [fit_square(wide, 16, m) for m in ("crop", "pad", "stretch") if m != mode]
    assert not any(np.array_equal(expected, o) for o in others)
