"""Grad-CAM on layers whose output is not a (B, C, H, W) feature map: a transformer's tokens (B, prefix + h*w, C)
or a channels-last stage (B, H, W, C, e.g. Swin).

While the CAM runs, a forward hook on the layer passes its output through a probe module in (B, C, h, w) form —
prefix tokens (class, distillation, register tokens: timm's `num_prefix_tokens`) set aside, patch tokens laid out
on the patch grid (timm's `patch_embed`, at the input's size) — and puts it back as it was, so the net computes the
same logits and Grad-CAM reads the probe. A layout that cannot be laid out on the grid is a ModelError suggesting
Integrated Gradients, never a map of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from chestxray.errors import ModelError

LAYOUTS = ("nchw", "nhwc", "tokens")
IG_HINT = "use --method ig (Integrated Gradients) for this model"


class GridProbe(torch.nn.Module):
    """What Grad-CAM reads: the layer's output as (B, C, h, w) (a copy, so its gradient is its own)."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid.clone()


def token_grid(net: torch.nn.Module, tokens: int, image_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(prefix tokens, h, w) of a token model's sequence of `tokens` for an input of image_hw; ModelError if unknown."""
    prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
    embed = getattr(net, "patch_embed", None)
    grid: Any = None
    if embed is not None and hasattr(embed, "dynamic_feat_size"):
        grid = embed.dynamic_feat_size(image_hw)
    elif embed is not None:
        grid = getattr(embed, "grid_size", None)
    if grid is None or int(grid[0]) * int(grid[1]) != tokens - prefix:
        raise ModelError(f"Grad-CAM cannot lay the {tokens} tokens of {type(net).__name__} out on its patch grid "
                         f"({grid}, {prefix} prefix tokens); {IG_HINT}")
    return prefix, int(grid[0]), int(grid[1])


def _hook(net: torch.nn.Module, probe: GridProbe, layout: str, image_hw: tuple[int, int]) -> Any:
    """A forward hook routing the layer's output through `probe` in (B, C, h, w) form and back."""

    def hook(module: torch.nn.Module, args: Any, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() != (3 if layout == "tokens" else 4):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"Grad-CAM layer of {type(net).__name__} gives {shape}, not the {layout} layout it "
                             f"was registered with; {IG_HINT}")
        if layout == "nchw":
            return probe(out)
        if layout == "nhwc":
            return probe(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        prefix, h, w = token_grid(net, out.shape[1], image_hw)
        patches = probe(out[:, prefix:].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w))
        return torch.cat([out[:, :prefix], patches.flatten(2).transpose(1, 2)], dim=1)

    return hook


@contextmanager
def spatial_probe(net: torch.nn.Module, layer: torch.nn.Module, layout: str, image_hw: tuple[int, int]
                  ) -> Iterator[torch.nn.Module]:
    """Yield the module whose output is `layer`'s as (B, C, h, w) for inputs of image_hw, for as long as it lasts."""
    if layout not in LAYOUTS:
        raise ModelError(f"unknown Grad-CAM layout {layout!r} (one of {list(LAYOUTS)}); {IG_HINT}")
    probe = GridProbe()
    handle = layer.register_forward_hook(_hook(net, probe, layout, image_hw))
    try:
        yield probe
    finally:
        handle.remove()
