"""Shortcut check: acquisition features alone (size, shape, bytes, brightness, bit depth, view) against each label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chestxray.data.shortcuts import COMBINED, null_sd, shortcut_check, shortcut_warnings
from chestxray.data.sources.folders import read_folder


def _folder(root: Path, wide_pneumonia: bool, n: int = 40) -> Path:
    """NORMAL/ and PNEUMONIA/ noise images; heights vary at random, widths follow the aspect ratio rule."""
    rng = np.random.default_rng(3)
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            height = int(rng.integers(30, 50))
            aspect = 1.4 if wide_pneumonia and cls == "PNEUMONIA" else float(rng.choice([1.0, 1.4]))
            img = rng.integers(60, 200, size=(height, round(height * aspect)), dtype=np.uint8)
            Image.fromarray(img).save(root / cls / f"person{i}_{cls.lower()}_{i}.png")
    return root


def test_shortcut_check_finds_the_aspect_ratio_signal(tmp_path: Path) -> None:
    catalog = read_folder(_folder(tmp_path / "wide", wide_pneumonia=True))
    table = shortcut_check(catalog).set_index("feature")
    assert table.loc["aspect_ratio", "auroc"] > 0.7 and table.loc["aspect_ratio", "flagged"]
    assert table.loc[COMBINED, "flagged"] and not table.loc["bit_depth", "flagged"]
    assert table.loc["bit_depth", "auroc"] == 0.5  # all 8-bit: no signal, exactly
    (line,) = shortcut_warnings(table.reset_index())
    assert line.startswith("shortcut risk for PNEUMONIA") and "aspect ratio (width/height) (AUROC" in line
    assert "higher in PNEUMONIA images" in line and "--resize crop" in line


def test_shortcut_check_finds_nothing_where_there_is_nothing(tmp_path: Path) -> None:
    catalog = read_folder(_folder(tmp_path / "fair", wide_pneumonia=False))
    table = shortcut_check(catalog)
    assert set(table["feature"]) >= {"width", "height", "aspect_ratio", "file_size", "mean_intensity",
                                     "std_intensity", "bit_depth", COMBINED}
    assert not table["flagged"].any(), table
    assert (table["auroc"] - 0.5).abs().max() < 0.25 and shortcut_warnings(table) == []


def test_null_sd_matches_the_mann_whitney_null() -> None:
    # 40 positives and 40 negatives: sqrt(81 / (12 * 1600)) = 0.065
    assert null_sd(40, 40) == pytest.approx(0.06495, abs=1e-4)
