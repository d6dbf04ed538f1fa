"""Augmentation policies (none / minimal / advanced) as named, seeded Albumentations pipelines, and normalisation.

Policies work on uint8 (H, W) grayscale arrays at the prepared size and keep anatomy plausible: no vertical
flips, no 90° rotations. Randomness comes only from each pipeline's own seed (Albumentations Compose(seed=...));
nothing touches global RNGs. Normalisation is a separate explicit step (see normalize).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import chestxray.data.imaging  # noqa: F401 - sets OpenCV to single-threaded, fork-safe use (see chestxray.data.imaging)
from chestxray.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Named input statistics (per RGB channel, on the [0, 1] pixel scale). 'gray' is x / 127.5 - 1, i.e. mean = std =
# 0.5: what EfficientNet-Lite / Inception-style weights expect, and the default of models trained from scratch.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "gray": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
Normalization = str | Mapping[str, Sequence[float]]  # a name above, or {"mean": [r, g, b], "std": [r, g, b]}


def input_stats(normalization: Normalization, in_chans: int = 1) -> tuple[list[float], list[float]]:
    """(mean, std) per input channel on the [0, 1] pixel scale for a named or explicit normalisation.

    With in_chans=1 the three RGB values are averaged (ImageNet grey: mean 0.449, std 0.226); a pretrained 1-channel
    stem is folded for exactly these values (chestxray.models.stem), so the grey image normalised with them gives
    the RGB net's first-layer output on the replicated image normalised per channel.
    """
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 or 3, got {in_chans}")
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {normalization!r}; expected one of {list(NORMALIZATIONS)} "
                              "or {'mean': [r, g, b], 'std': [r, g, b]}")
        mean, std = NORMALIZATIONS[normalization]
    else:
        try:
            mean, std = tuple(float(v) for v in normalization["mean"]), tuple(float(v) for v in normalization["std"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"normalization {normalization!r}: expected a name {list(NORMALIZATIONS)} or "
                              "{'mean': [r, g, b], 'std': [r, g, b]}") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"normalization {dict(normalization)!r}: need 3 means and 3 positive stds")
    if in_chans == 3:
        return list(mean), list(std)
    return [round(sum(mean) / 3, 6)], [round(sum(std) / 3, 6)]


def normalization_name(mean: Sequence[float], std: Sequence[float]) -> Normalization:
    """The name of these RGB statistics when they are a named normalisation, else {'mean': ..., 'std': ...}."""
    for name, (m, s) in NORMALIZATIONS.items():
        if all(abs(a - b) < 1e-4 for a, b in zip((*mean, *std), (*m, *s), strict=True)):
            return name
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


_POLICIES: dict[str, Callable[[int], list[Any]]] = {}


def register_policy(name: str) -> Callable[[Callable[[int], list[Any]]], Callable[[int], list[Any]]]:
    """Decorator: register a function size -> list of Albumentations transforms under `name` (unique)."""

    def deco(func: Callable[[int], list[Any]]) -> Callable[[int], list[Any]]:
        if name in _POLICIES:
            raise ConfigError(f"augmentation policy {name!r} is already registered")
        _POLICIES[name] = func
        return func

    return deco


def list_policies() -> list[str]:
    """Names accepted by build_augment."""
    return list(_POLICIES)


@register_policy("none")
def _none(size: int) -> list[Any]:
    return []


@register_policy("minimal")
def _minimal(size: int) -> list[Any]:
    import albumentations as A

    return [A.HorizontalFlip(p=0.5)]


@register_policy("advanced")
def _advanced(size: int) -> list[Any]:
    import albumentations as A

    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=0, fill=0, p=0.7),
        A.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), p=0.3),
        A.Perspective(scale=(0.02, 0.05), fit_output=False, border_mode=0, fill=0, p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


def build_augment(policy: str = "none", size: int = 256, seed: int = 0):
    """The named policy as an albumentations.Compose seeded with `seed` (print it to inspect the steps).

    Call it as `pipeline(image=uint8 (H, W))["image"]`; 'none' is an empty Compose (identity).
    """
    import albumentations as A

    if policy not in _POLICIES:
        close = difflib.get_close_matches(str(policy), list(_POLICIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown augmentation policy {policy!r} (valid: {list(_POLICIES)}){hint}")
    return A.Compose(_POLICIES[policy](size), seed=seed)


def normalize(images: torch.Tensor, in_chans: int = 1, normalization: Normalization = "gray",
              out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images (B, 1, H, W) or (1, H, W) → float32 model input with `in_chans` channels: (x / 255 − mean) / std.

    `normalization` names the statistics the model's weights expect ('gray': x / 127.5 − 1, i.e. mean = std = 0.5;
    'imagenet': ImageNet mean/std) or gives them ({'mean': [r, g, b], 'std': [r, g, b]}); with in_chans=3 the gray
    value is replicated and each channel gets its own statistics, with in_chans=1 their average (see input_stats).
    `out` (float32, the result's shape, e.g. pinned memory) receives the result when given.
    """
    import torch  # here, not at the top: reading a card's normalisation (input_stats) needs no torch

    mean, std = input_stats(normalization, in_chans)
    if images.ndim not in (3, 4) or images.shape[-3] != 1:
        raise ConfigError(f"normalize expects uint8 (B, 1, H, W) or (1, H, W), got {tuple(images.shape)}")
    scale = [1.0 / (255.0 * s) for s in std]
    shift = [-m / s for m, s in zip(mean, std, strict=True)]
    shape = (*images.shape[:-3], in_chans, *images.shape[-2:])
    if out is not None and (tuple(out.shape) != shape or out.dtype != torch.float32):
        raise ConfigError(f"normalize: out must be float32 {shape}, got {out.dtype} {tuple(out.shape)}")
    if images.device.type != "cpu":
        out = torch.empty(shape, dtype=torch.float32, device=images.device) if out is None else out
        for c in range(in_chans):
            torch.mul(images, scale[c], out=out[..., c:c + 1, :, :]).add_(shift[c])
        return out
    # numpy on CPU: single-threaded and fast whatever torch's thread settings (torch's pool is slow when
    # the cores are busy with loader workers); one multiply-add per output channel, no broadcast temporaries
    pixels = images.numpy().astype(np.float32)
    out = torch.empty(shape, dtype=torch.float32) if out is None else out
    out_np = out.numpy()
    for c in range(in_chans):
        view = out_np[..., c:c + 1, :, :]
        np.multiply(pixels, np.float32(scale[c]), out=view)
        view += np.float32(shift[c])
    return out


def write_augment_grid(prepared: str | Path, out_dir: str | Path, policy: str = "advanced", n: int = 16,
                       seed: int = 0) -> Path:
    """Write augment-<policy>.png: the first n training images of PREPARED, each as original | augmented pair."""
    from PIL import Image

    from chestxray.data.shards import iter_split_samples, read_manifest
    from chestxray.files import atomic_path

    manifest = read_manifest(prepared)
    size = int(manifest["image_size"])
    split = "train" if manifest["splits"].get("train", {}).get("count") else next(
        (s for s, v in manifest["splits"].items() if v.get("count")), "train")
    pipeline = build_augment(policy, size, seed)
    pairs = []
    for sample in iter_split_samples(prepared, split, manifest=manifest):
        img = sample["image"]
        pairs.append(np.concatenate([img, np.full((size, 2), 255, np.uint8), pipeline(image=img)["image"]], axis=1))
        if len(pairs) >= n:
            break
    if not pairs:
        raise ConfigError(f"{prepared}: no images to show in split {split!r}")
    cols = min(4, len(pairs))
    rows = -(-len(pairs) // cols)
    cell_h, cell_w = pairs[0].shape
    grid = np.full((rows * (cell_h + 4), cols * (cell_w + 4)), 128, np.uint8)
    for i, pair in enumerate(pairs):
        r, c = divmod(i, cols)
        grid[r * (cell_h + 4):r * (cell_h + 4) + cell_h, c * (cell_w + 4):c * (cell_w + 4) + cell_w] = pair
    out = Path(out_dir) / f"augment-{policy}.png"
    with atomic_path(out) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return out
