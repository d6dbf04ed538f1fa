"""build_model: one entry point that builds a registered architecture and loads its weights."""

from __future__ import annotations

import functools
from pathlib import Path

from torch import nn

from chestxray.errors import ModelError
from chestxray.models.registry import PRETRAINED_CHOICES, check_in_chans, get_spec
from chestxray.models.weights import imagenet_state, load_weights_into, read_state_dict


def build_model(
    name: str,
    num_labels: int,
    in_chans: int = 1,
    pretrained: str | None = None,
    weights: str | Path | None = None,
    offline: bool | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build a registered architecture returning logits (B, num_labels) for images (B, in_chans, H, W).

    pretrained='imagenet' loads the spec's ImageNet weights (torchvision files through the $TORCH_HOME/hub cache,
    downloaded unless offline; timm hub weights; the offline EfficientNet-Lite0 package); `weights` is a local
    state dict (.pth/.pt/.ckpt via torch.load(weights_only=True), or .safetensors). Heads of another size are
    replaced by a new one; a 1-channel stem gets the sum of the RGB kernels (see load_weights_into).
    dropout (None: the architecture's own) sets the rate of every nn.Dropout; a model without one is an error.
    """
    spec = get_spec(name)
    check_in_chans(in_chans)
    if num_labels < 1:
        raise ModelError(f"num_labels must be at least 1, got {num_labels}")
    if pretrained is not None and pretrained not in PRETRAINED_CHOICES:
        raise ModelError(f"unknown pretrained weights {pretrained!r}; choose one of {PRETRAINED_CHOICES} or none")
    if pretrained is not None and weights is not None:
        raise ModelError("give either --pretrained or --weights, not both")
    net = spec.builder(num_labels, in_chans)
    net.gradcam_layer = spec.gradcam or spec.blocks[-1][-1]  # where Grad-CAM reads (a name: a module would be saved twice)
    net.gradcam_layout = spec.gradcam_layout  # how it lays out its output (tokens, channels last: explain.layouts)
    if pretrained == "imagenet":
        state, source = imagenet_state(name, offline=offline)
        load_weights_into(net, spec, state, source=source)
    elif weights is not None:
        load_weights_into(net, spec, read_state_dict(weights), source=str(weights))
    if dropout is not None:
        set_dropout(net, name, dropout)
    return net


def set_dropout(net: nn.Module, name: str, rate: float) -> None:
    """Set p of every nn.Dropout in `net` (model `name`); ModelError when it has none."""
    layers = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    if not layers:
        raise ModelError(f"model {name!r} has no dropout layer; leave dropout out of its settings")
    for layer in layers:
        layer.p = rate


@functools.lru_cache(maxsize=None)
def has_dropout(name: str) -> bool:
    """Whether the registered architecture `name` has an nn.Dropout whose rate `dropout` can set."""
    net = get_spec(name).builder(1, 1)
    return any(isinstance(m, nn.Dropout) for m in net.modules())
