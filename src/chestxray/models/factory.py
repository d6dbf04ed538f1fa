"""build_model: one entry point that builds a registered architecture and loads its weights.

Every new head starts near zero, its bias zero or the caller's (training passes the log-odds of the training
prevalence, so the first loss is the constant prediction's). Architectures initialise their classifier for ImageNet's
1,000 classes: timm's Google-style init draws each weight from U(±1/sqrt(fan_out)), which with one output is U(±1)
over EfficientNet-Lite0's 1,280 pooled features; on pretrained features the fresh head gave logits of 3 to 7 and the
frozen recipe started at a BCE loss of 17 (chance: 0.69). So (docs/transfer.md has the measurements):

- on a pretrained backbone the new head's weights are zero: every image starts at the bias, the loss starts at the
  constant prediction's, and a thawed backbone gets no gradient until the head has begun to learn (what
  linear-probe-then-fine-tune does on purpose, Kumar et al. 2022). A linear head on fixed features is a convex
  problem, so random weights would buy only a random start, and even N(0, 0.01²) gives Lite0 logits up to 1.3;
- from scratch the head's weights follow PyTorch's default nn.Linear init, U(±1/sqrt(fan_in)): every nn.Linear
  head already does (its own draw is kept), timm's wider U(±1/sqrt(fan_out)) is redrawn from it. On random features
  that starts small (|logit| < 0.6 on real X-rays for the registry and timm models tried) and, unlike a zero head,
  passes the backbone a gradient from the first step (a backbone's gradient is proportional to the head's weights,
  which matters in the short scratch runs of the demo and the tests).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
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
    head_bias: Sequence[float] | None = None,
) -> nn.Module:
    """Build a registered architecture returning logits (B, num_labels) for images (B, in_chans, H, W).

    pretrained='imagenet' loads the spec's ImageNet weights (torchvision files through the $TORCH_HOME/hub cache,
    downloaded unless offline; timm hub weights; the offline EfficientNet-Lite0 package); `weights` is a local
    state dict (.pth/.pt/.ckpt via torch.load(weights_only=True), or .safetensors). Heads of another size are
    replaced by a new one; a 1-channel stem gets the RGB kernels folded exactly (see load_weights_into).
    A head not loaded from weights starts near zero with bias `head_bias` (None: zeros): zero weights on pretrained
    features, PyTorch's default init from scratch (see init_head and the module notes).
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
    # loaded weights with a head of this size overwrite it below
    init_head(net, spec.head, head_bias, zero=pretrained is not None or weights is not None)
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


def init_head(net: nn.Module, head: str, bias: Sequence[float] | None = None, zero: bool = True) -> None:
    """Start head layer `head` (a Linear or 1×1 conv) near zero: weights zero (`zero`, for pretrained features) or
    within PyTorch's default U(±1/sqrt(fan_in)) (from scratch: the builder's own draw when it already is, as for
    every nn.Linear, else redrawn from it), bias `bias` (None: zeros); a bias of the wrong length is a ModelError."""
    layer = net.get_submodule(head)
    weight, current = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelError(f"head {head!r} of {type(net).__name__} has no weight to initialise; the spec names "
                         "the wrong head layer")
    with torch.no_grad():
        if zero:
            weight.zero_()
        # redraw a head wider than the fan-in bound (e.g. timm's U(±1/sqrt(fan_out))); a meta model has no values
        elif weight.is_meta or float(weight.abs().max()) > 1 / math.sqrt(weight[0].numel()):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's own: U(±1/sqrt(fan_in))
        if isinstance(current, torch.Tensor):
            values = torch.zeros_like(current) if bias is None else torch.as_tensor(bias, dtype=current.dtype)
            if values.shape != current.shape:
                raise ModelError(f"head bias of {len(values)} value(s) for a head with {current.numel()} outputs")
            current.copy_(values)
        elif bias is not None and any(float(b) != 0.0 for b in bias):
            raise ModelError(f"head {head!r} has no bias, so it cannot start at the given log-odds")


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
