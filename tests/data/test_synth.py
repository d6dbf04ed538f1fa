"""Synthetic NIH-layout data: readable by the NIH reader, findings drawn where boxes.csv says, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data.sources import read_nih
from chestxray.data.synth import FINDINGS, make_synthetic
from chestxray.errors import ConfigError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth"), n=40, size=64, seed=0)


def test_layout_and_nih_reader(synth_dir: Path) -> None:
    assert "SYNTHETIC" in (synth_dir / "README.txt").read_text()
    assert len(list((synth_dir / "images").glob("*.png"))) == 40
    catalog = read_nih(synth_dir / "labels.csv", synth_dir / "images")
    assert len(catalog.table) == 40 and catalog.info["missing_images"] == []
    assert catalog.table["patient_id"].value_counts().max() > 1  # several images per patient
    counts = dict(zip(catalog.labels, catalog.label_matrix.sum(0).tolist()))
    assert all(counts[f] > 0 for f in FINDINGS)
    assert sum(counts.values()) == sum(counts[f] for f in FINDINGS)
    assert (catalog.label_matrix.sum(1) == 0).any()
    image = Image.open(catalog.table["path"].iloc[0])
    assert image.mode == "L" and image.size == (64, 64)


def test_boxes_mark_visible_findings(synth_dir: Path) -> None:
    labels = pd.read_csv(synth_dir / "labels.csv")
    boxes = pd.read_csv(synth_dir / "boxes.csv")
    assert list(boxes.columns) == ["Image Index", "Finding Label", "x", "y", "w", "h"]
    expected = {(row["Image Index"], name) for _, row in labels.iterrows()
                for name in row["Finding Labels"].split("|") if name != "No Finding"}
    assert set(zip(boxes["Image Index"], boxes["Finding Label"])) == expected
    for _, box in boxes.iterrows():
        img = np.asarray(Image.open(synth_dir / "images" / box["Image Index"]), dtype=float)
        assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["w"] <= 64 and box["y"] + box["h"] <= 64
        inside = img[box["y"]:box["y"] + box["h"], box["x"]:box["x"] + box["w"]].mean()
        if box["Finding Label"] == "Nodule":
            assert inside > 170
        if box["Finding Label"] == "Pneumothorax":
            assert (img[box["y"]:box["y"] + box["h"], box["x"]:box["x"] + box["w"]] < 40).mean() > 0.5


def test_deterministic_and_checked(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", n=6, size=32, seed=3)
    b = make_synthetic(tmp_path / "b", n=6, size=32, seed=3)
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert (a / "images" / "00000001_000.png").read_bytes() == (b / "images" / "00000001_000.png").read_bytes()
    with pytest.raises(ConfigError, match="size >= 16"):
        make_synthetic(tmp_path / "c", n=3, size=8)
