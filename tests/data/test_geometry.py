"""The shape of an image survives its fitting into the model's square: the geometry check sees it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from chestxray.data.geometry import discarded_by_crop, geometry_check
from chestxray.data.sources import read_folder


def test_crop_discards_the_long_side_beyond_the_square() -> None:
    np.testing.assert_allclose(discarded_by_crop(np.array([100, 100, 80]), np.array([100, 150, 40])), [0, 1 / 3, 0.5])


def test_pad_bars_tell_the_shape_and_crop_loss_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        for i in range(40):
            width = int(rng.integers(32, 64))
            pixels = rng.integers(60, 200, (32, width), dtype=np.uint8)
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / cls / f"{cls}{i:03d}-0001.png")
    table = geometry_check(read_folder(tmp_path), size=16).set_index(["class", "geometry"])
    assert set(table.index.get_level_values(0)) == {"normal", "PNEUMONIA"}
    assert table.loc[("normal", "pad"), "wider_auroc"] > 0.95  # the bars are the aspect ratio
    assert table.loc[("normal", "pad"), "images"] == 40 and table.loc[("normal", "pad"), "patients"] == 40
    assert 0 < table.loc[("PNEUMONIA", "crop"), "discarded_median"] < table.loc[("PNEUMONIA", "crop"), "discarded_max"] < 0.5
    assert table["note"].eq("").all()
    assert set(table.index.get_level_values(1)) == {"crop", "pad", "stretch"}
