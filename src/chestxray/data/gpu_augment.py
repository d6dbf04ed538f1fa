"""The augmentation policies as batched tensor pipelines (kornia), to run on the GPU where the CPU cannot keep up.

Mirrors chestxray.data.augment's Albumentations policies step by step, with each image of a batch drawing its own
parameters: horizontal flip (p 0.5); affine: rotation ±10°, translation ±6 %, scale 0.9-1.1, zero border (p 0.7);
random resized crop: area 0.8-1.0, aspect 0.9-1.1 (p 0.3); perspective (p 0.3): as Albumentations, a quadrilateral
whose corners lie inside the image is stretched onto the whole image (kornia alone maps the corners inwards, which
shrinks the image into a black border instead). Albumentations' scale 0.02-0.05 moves the top and left edges 3.7 %
of the side inwards on average but the bottom and right ones 7.6 % (measured on ramp images: it warps onto the
quadrilateral's own size, then resizes); kornia's distortion 0.22 moves every edge by their mean, 5.5 %; brightness and contrast ±15 %
(p 0.5). Input uint8 or float grey levels (B, 1, H, W) in [0, 255] on any device; output float32 grey levels in
[0, 255], same shape, ready for normalize(). tests/data/test_gpu_augment.py compares the output distribution with
the CPU policy's on the same images.

Randomness: kornia draws from torch's global generator, so each call runs inside torch.random.fork_rng seeded from
the pipeline's own counter (seed, call number): the caller's global RNG state is restored afterwards, and the same
seed gives the same augmentations on the same device. Needs kornia (pip install 'chestxray[gpu]').
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from chestxray.errors import ConfigError

PERSPECTIVE_DISTORTION = 0.22  # kornia: corner shift uniform in [0, d * side / 2], mean d / 4 of the side (5.5 %)


def _kornia() -> Any:
    try:
        import kornia.augmentation as K
    except ImportError:
        raise ConfigError("GPU augmentation needs kornia; pip install 'chestxray[gpu]' (or kornia)") from None
    return K


def _inner_quad_perspective(p: float) -> Any:
    """kornia's RandomPerspective with its point pairs swapped: the inner quadrilateral is mapped onto the image."""
    K = _kornia()

    class InnerQuadPerspective(K.RandomPerspective):
        def compute_transformation(self, input: torch.Tensor, params: dict, flags: dict) -> torch.Tensor:
            swapped = {**params, "start_points": params["end_points"], "end_points": params["start_points"]}
            return super().compute_transformation(input, swapped, flags)

    return InnerQuadPerspective(distortion_scale=PERSPECTIVE_DISTORTION, p=p)


def _steps(policy: str, size: int) -> list[Any]:
    K = _kornia()
    if policy == "none":
        return []
    if policy == "minimal":
        return [K.RandomHorizontalFlip(p=0.5)]
    if policy == "advanced":
        return [
            K.RandomHorizontalFlip(p=0.5),
            K.RandomAffine(degrees=10.0, translate=(0.06, 0.06), scale=(0.9, 1.1), padding_mode="zeros", p=0.7),
            K.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), p=0.3),
            _inner_quad_perspective(p=0.3),
            K.ColorJiggle(brightness=0.15, contrast=0.15, p=0.5),
        ]
    from chestxray.data.augment import list_policies

    raise ConfigError(f"augmentation policy {policy!r} has no GPU version (GPU policies: none, minimal, advanced; "
                      f"CPU policies: {list_policies()})")


@dataclass
class GpuAugment:
    """A named policy as a kornia pipeline with its own seed; call it on a batch (B, 1, H, W)."""

    policy: str
    size: int
    seed: int = 0
    calls: int = 0
    pipeline: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import torch.nn as nn

        self.pipeline = nn.Sequential(*_steps(self.policy, self.size))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Grey levels (B, 1, H, W), uint8 or float in [0, 255] → augmented float32 grey levels in [0, 255]."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ConfigError(f"GPU augmentation expects (B, 1, H, W) grey levels, got {tuple(images.shape)}")
        x = images.float() / 255.0
        if len(self.pipeline) == 0:
            return x * 255.0
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + self.calls)
            self.calls += 1
            out = self.pipeline(x)
        return out.clamp_(0.0, 1.0) * 255.0


def build_gpu_augment(policy: str = "none", size: int = 256, seed: int = 0) -> GpuAugment:
    """The named policy (none, minimal, advanced) as a batched tensor pipeline for the GPU (see the module doc)."""
    return GpuAugment(policy, size, seed)
