"""Issue 22, degenerate images: files a decoder accepts but no model should learn from are quarantined by prepare and
predict with their reason (before: they became training samples without a word)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data.catalog import Catalog
from chestxray.data.imaging import load_gray, load_square
from chestxray.data.prepare import prepare_dataset
from chestxray.errors import DataError
from tests.data import probes

REASONS = {
    "short zlib stream": r"truncated image data: the compressed pixels end after 10 of 100 rows",
    "short zlib stream, 16 bit": r"truncated image data: the compressed pixels end after 10 of 100 rows",
    "DICOM WindowWidth=0": r"DICOM WindowWidth 0 \(centre 2000\) is invalid: the standard requires a width of at "
                           r"least 1",
    "DICOM RescaleSlope=0": r"DICOM RescaleSlope is 0: every pixel would become the intercept",
    "1x1 image": r"image is 1 × 1 px, below 16 px on a side",
    "1x5000 image": r"image is 5000 × 1 px, below 16 px on a side",
    "40x400 image": r"image is 400 × 40 px, an aspect ratio beyond 5:1",
    "constant image": r"every pixel has the same grey level \(128\)",
}


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory) -> dict[str, Path]:
    return probes.degenerate_images(tmp_path_factory.mktemp("degenerate"))


@pytest.mark.parametrize("probe", list(REASONS))
def test_each_degenerate_image_is_refused_with_its_reason(degenerate: dict[str, Path], probe: str) -> None:
    assert set(degenerate) == set(REASONS)
    with pytest.raises(DataError, match=REASONS[probe]):
        load_square(degenerate[probe], 32)


def test_healthy_images_that_look_alike_still_decode(tmp_path: Path) -> None:
    """A black last row is not a short stream; a window of width 1 is valid; 16 px and 5:1 are accepted."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    pixels[-8:] = 0
    Image.fromarray(pixels).save(tmp_path / "black-bottom.png")
    assert (load_square(tmp_path / "black-bottom.png", 64, "pad") == pixels).all()
    Image.fromarray(pixels.astype(np.uint16) * 200).save(tmp_path / "black-bottom16.png")
    assert not load_gray(tmp_path / "black-bottom16.png")[-1].any()
    probes.dicom(tmp_path / "w1.dcm", probes.gradient(), WindowCenter=2000, WindowWidth=1)
    assert set(np.unique(load_square(tmp_path / "w1.dcm", 32))) <= {0, 255}
    probes.png(tmp_path / "small.png", size=(16, 80))
    assert load_square(tmp_path / "small.png", 32).shape == (32, 32)
    probes.dicom(tmp_path / "slope.dcm", probes.gradient(), RescaleSlope=2, RescaleIntercept=-1024)
    assert np.ptp(load_square(tmp_path / "slope.dcm", 32)) > 200


def test_prepare_quarantines_every_degenerate_image_with_its_reason(degenerate: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    rows = [(f"good{i}", str(probes.png(tmp_path / f"good{i}.png", seed=i)), f"g{i}", "train", i % 2)
            for i in range(4)]
    rows += [(name, str(path), f"d{i}", "train", 1) for i, (name, path) in enumerate(degenerate.items())]
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", "Mass"]).astype({"Mass": "uint8"})
    result = prepare_dataset(Catalog(table=table, labels=("Mass",)), tmp_path / "prep", size=32, workers=0)
    assert result.counts["train"] == 4 and result.quarantined == len(REASONS)
    reasons = dict(zip(result.quarantine["image_id"], result.quarantine["reason"]))
    for name, pattern in REASONS.items():
        assert re.search(pattern, reasons[name]), (name, reasons[name])
    saved = pd.read_csv(tmp_path / "prep" / "quarantine.csv")
    assert len(saved) == len(REASONS)


def test_predict_lists_degenerate_images_as_quarantined(degenerate: dict[str, Path]) -> None:
    import torch

    from chestxray.inference.predict import torch_scorer
    from chestxray.inference.stream import iter_predictions
    from chestxray.models import build_model
    from chestxray.models.bundle import load_bundle, save_bundle

    torch.manual_seed(0)
    folder = save_bundle(degenerate["constant image"].parent / "bundle", build_model("cnn-tiny", num_labels=1), {
        "architecture": "cnn-tiny", "num_labels": 1, "in_chans": 1, "image_size": 32, "resize": "crop",
        "normalization": "gray", "labels": ["Mass"], "task": "binary"})
    frames = list(iter_predictions(torch_scorer(load_bundle(folder)), list(degenerate.values()), batch_size=16))
    table = pd.concat(frames)
    assert (table["status"] == "quarantined").all() and table["p_Mass"].isna().all()
    assert table["reason"].str.contains("same grey level|truncated|DICOM|px").all()
