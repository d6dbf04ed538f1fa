"""Augmentation policies (registry, seeding, no anatomy-breaking steps), normalize, and the preview grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from chestxray.data.augment import (
    build_augment,
    list_policies,
    normalize,
    write_augment_grid,
)
from chestxray.data.catalog import Catalog
from chestxray.data.prepare import prepare_dataset
from chestxray.errors import ConfigError


def _image() -> np.ndarray:
    img = np.zeros((32, 32), np.uint8)
    img[4:28, 6:14] = 200  # an asymmetric shape, so flips and shifts change pixels
    img[10:20, 20:24] = 90
    return img


def test_policies_are_named_and_free_of_vertical_flips():
    assert list_policies()[:3] == ["none", "minimal", "advanced"]
    names = {p: [type(t).__name__ for t in build_augment(p, 32, 0).transforms] for p in list_policies()}
    assert names["none"] == [] and names["minimal"] == ["HorizontalFlip"]
    assert {"Affine", "RandomResizedCrop", "Perspective", "RandomBrightnessContrast"} <= set(names["advanced"])
    assert not {"VerticalFlip", "RandomRotate90", "Transpose"} & {n for v in names.values() for n in v}
    with pytest.raises(ConfigError, match="did you mean 'minimal'"):
        build_augment("minimum", 32, 0)


def test_policies_are_seeded_and_keep_shape():
    img = _image()
    assert np.array_equal(build_augment("none", 32, 0)(image=img)["image"], img)
    outs = {}
    for seed in (0, 0, 1):
        pipe = build_augment("advanced", 32, seed)
        outs.setdefault(seed, []).append(np.stack([pipe(image=img)["image"] for _ in range(5)]))
    assert np.array_equal(outs[0][0], outs[0][1])
    assert not np.array_equal(outs[0][0], outs[1][0])
    assert outs[0][0].shape == (5, 32, 32) and outs[0][0].dtype == np.uint8
    flips = build_augment("minimal", 32, 0)
    seen = {flips(image=img)["image"].tobytes() for _ in range(20)}
    assert seen == {img.tobytes(), img[:, ::-1].tobytes()}


def test_normalize_gray_and_imagenet():
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 1, 3)
    gray = normalize(images, 1, "gray")
    assert gray.dtype == torch.float32 and gray.shape == (1, 1, 1, 3)
    assert torch.allclose(gray.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)
    rgb = normalize(images, 3, "imagenet")
    assert rgb.shape == (1, 3, 1, 3)
    assert torch.allclose(rgb[0, :, 0, 1], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    assert normalize(images[0], 3, "gray").shape == (3, 1, 3)  # a single (1, H, W) image works too
    assert normalize(images, 1, "imagenet").shape == (1, 1, 1, 3)
    with pytest.raises(ConfigError, match="normalization"):
        normalize(images, 1, "zscore")
    with pytest.raises(ConfigError, match="in_chans"):
        normalize(images, 2, "gray")


def test_write_augment_grid(tmp_path):
    rows = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(_image()).save(path)
        rows.append((f"i{i}", str(path), f"p{i}", "train", i % 2))
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", "PNEUMONIA"])
    table["PNEUMONIA"] = table["PNEUMONIA"].astype("uint8")
    prepare_dataset(Catalog(table=table, labels=("PNEUMONIA",), task="binary"), tmp_path / "prep", size=32, workers=1)
    out = write_augment_grid(tmp_path / "prep", tmp_path / "explore", "advanced", n=5, seed=0)
    assert out.name == "augment-advanced.png" and out.is_file()
    with Image.open(out) as grid:
        assert grid.size == (4 * (2 * 32 + 2 + 4), 2 * (32 + 4))
