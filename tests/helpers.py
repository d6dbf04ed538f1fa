"""Shared by tests that score with an untrained model: new heads start at zero (every image would score p = 0.5),
so scoring tests give the head random weights to make scores differ between images."""

from __future__ import annotations

import torch

from chestxray.models import build_model, get_spec


def scoring_model(name: str, num_labels: int, in_chans: int = 1, seed: int = 0) -> torch.nn.Module:
    """build_model(name, ...) with a seeded random head (std 1 / sqrt(fan in)), for tests of scoring paths."""
    net = build_model(name, num_labels, in_chans=in_chans)
    head = net.get_submodule(get_spec(name).head)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * head.weight[0].numel() ** -0.5 * 3)
    return net
