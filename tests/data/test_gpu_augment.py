"""GPU augmentation (kornia, run here on CPU tensors): the same shapes and value range as the CPU policy, its own
seeded randomness, and output distributions that match the Albumentations policy's on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from chestxray.data.augment import build_augment
from chestxray.data.gpu_augment import build_gpu_augment
from chestxray.data.imaging import load_square
from chestxray.errors import ConfigError

SIZE = 48


@pytest.fixture(scope="module")
def images(shared_data: Path) -> np.ndarray:
    files = sorted((shared_data / "kaggle-chest-xray-pneumonia" / "NORMAL").glob("*.jpeg"))[:48]
    return np.stack([load_square(p, SIZE, "pad") for p in files])  # uint8 (N, S, S), zero bands from the padding


def test_shapes_range_and_seeded_randomness(images: np.ndarray) -> None:
    batch = torch.from_numpy(images[:8])[:, None]
    state = torch.get_rng_state()
    out = build_gpu_augment("advanced", SIZE, seed=3)(batch)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global generator is untouched
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 255.0 and not torch.equal(out, batch.float())
    again = build_gpu_augment("advanced", SIZE, seed=3)
    assert torch.equal(again(batch), out)  # same seed, same first batch
    assert not torch.equal(again(batch), out)  # the next call draws new parameters
    assert torch.equal(build_gpu_augment("none", SIZE)(batch), batch.float())
    with pytest.raises(ConfigError, match="has no GPU version"):
        build_gpu_augment("strong", SIZE)
    with pytest.raises(ConfigError, match=r"\(B, 1, H, W\)"):
        build_gpu_augment("advanced", SIZE)(batch[:, 0])


def test_advanced_policy_matches_the_cpu_policy_in_distribution(images: np.ndarray) -> None:
    """Per-image brightness, contrast and share of black (border) pixels over 4 passes of 48 real images: a
    two-sample KS test cannot tell the kornia policy from the Albumentations one (kornia's own perspective, which
    shrinks the image into a black border, fails the black-share test: p < 1e-6)."""
    cpu = build_augment("advanced", SIZE, seed=0)
    reference = np.stack([cpu(image=im)["image"] for _ in range(4) for im in images]).astype(np.float32)
    gpu = build_gpu_augment("advanced", SIZE, seed=0)
    got = torch.cat([gpu(torch.from_numpy(images)[:, None]) for _ in range(4)])[:, 0].numpy()
    assert got.shape == reference.shape
    stats = {"mean": lambda x: x.mean((1, 2)), "std": lambda x: x.std((1, 2)), "black": lambda x: (x < 1).mean((1, 2))}
    for name, stat in stats.items():
        assert ks_2samp(stat(reference), stat(got)).pvalue > 0.01, name
    flipped = build_gpu_augment("minimal", SIZE, seed=1)
    share = np.mean([bool(torch.equal(o, torch.from_numpy(im)[None].float().flip(-1)))
                     for o, im in zip(flipped(torch.from_numpy(images)[:, None]), images)])
    assert 0.25 <= share <= 0.75  # each image flips with p 0.5 on its own
