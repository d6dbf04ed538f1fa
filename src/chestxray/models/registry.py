"""Model registry: architectures registered by name with a decorator, each with its data config and the names of
its stem, head, backbone stages and Grad-CAM layer (what freezing, weight loading and explanations need)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from chestxray.data.labels import closest
from chestxray.errors import ModelError

log = logging.getLogger(__name__)

PRETRAINED_CHOICES: tuple[str, ...] = ("imagenet",)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: how to build it and where its stem, head and backbone blocks live."""

    name: str
    builder: Callable[[int, int], nn.Module]  # (num_labels, in_chans) -> randomly initialised net
    image_size: int  # the size it was designed for (prepared data may use another)
    stem: str  # qualified name of the first conv (its weight is adapted between 1 and 3 channels)
    head: str  # qualified name of the final Linear (replaced for num_labels)
    blocks: tuple[tuple[str, ...], ...]  # backbone stages, input to output, for --unfreeze-last N
    imagenet: str | None = None  # torchvision weights enum, e.g. "ResNet18_Weights.DEFAULT"
    description: str = ""
    gradcam: str = ""  # the layer Grad-CAM reads ("" → the last backbone block)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    image_size: int,
    stem: str,
    head: str,
    blocks: tuple[tuple[str, ...], ...],
    imagenet: str | None = None,
    description: str = "",
    gradcam: str = "",
) -> Callable[[Callable[[int, int], nn.Module]], Callable[[int, int], nn.Module]]:
    """Decorator registering builder(num_labels, in_chans) under `name`; a duplicate name is an error."""

    def decorate(builder: Callable[[int, int], nn.Module]) -> Callable[[int, int], nn.Module]:
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is already registered; pick another name")
        _REGISTRY[name] = ModelSpec(name, builder, image_size, stem, head, blocks, imagenet, description, gradcam)
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; unknown names list the valid ones and the closest match."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}{closest(name, list_models())}; choose one of: {', '.join(list_models())}"
        ) from None


def normalization_for(in_chans: int) -> str:
    """The input normalisation a model with `in_chans` channels expects: 1 → 'gray', 3 → 'imagenet'."""
    if in_chans not in (1, 3):
        raise ModelError(f"in_chans must be 1 (grayscale) or 3 (replicated RGB), got {in_chans}")
    return "gray" if in_chans == 1 else "imagenet"


def model_data_config(name: str, in_chans: int = 1) -> dict[str, int | str]:
    """How to feed model `name`: {'in_chans', 'normalization', 'image_size'} (read by training and bundles)."""
    spec = get_spec(name)
    return {"in_chans": in_chans, "normalization": normalization_for(in_chans), "image_size": spec.image_size}


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in net.parameters())


def head_module(net: nn.Module, name: str) -> nn.Module:
    """The classification head of a built model."""
    return net.get_submodule(get_spec(name).head)


def backbone_blocks(net: nn.Module, name: str) -> list[list[nn.Module]]:
    """The backbone stages of a built model, input to output (each a list of modules)."""
    return [[net.get_submodule(m) for m in block] for block in get_spec(name).blocks]
