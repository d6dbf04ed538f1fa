"""Model registry: architectures registered by name with a decorator, each with its data config and the names of
its stem, head, backbone stages and Grad-CAM layer (what freezing, weight loading and explanations need).

Besides eager entries there are lazy ones (built on first use, so listing models never imports timm) and name
prefixes resolved on demand: `timm/<name>` is any timm architecture (chestxray.models.timm_zoo).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from torch import nn

from chestxray.data.augment import Normalization, input_stats
from chestxray.data.labels import closest
from chestxray.errors import ModelError

log = logging.getLogger(__name__)

PRETRAINED_CHOICES: tuple[str, ...] = ("imagenet",)
# how the Grad-CAM layer lays out its output: feature maps (B, C, H, W), channels last (B, H, W, C, e.g. Swin), or
# tokens (B, prefix + h*w, C, a ViT): explain turns the last two into (B, C, h, w) before the CAM
GradcamLayout = Literal["nchw", "nhwc", "tokens"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: how to build it and where its stem, head and backbone blocks live."""

    name: str
    builder: Callable[[int, int], nn.Module]  # (num_labels, in_chans) -> randomly initialised net
    image_size: int  # the size it was designed for (prepared data may use another)
    stem: str  # qualified name of the first conv (its weight is adapted between 1 and 3 channels)
    head: str  # qualified name of the final Linear (replaced for num_labels)
    # backbone stages, input to output, for --unfreeze-last N: each a tuple of names of modules, or of parameters
    # held directly by a module (a ViT's cls_token, pos_embed); every parameter outside the head is in one
    blocks: tuple[tuple[str, ...], ...]
    imagenet: str | None = None  # torchvision weights enum, e.g. "ResNet18_Weights.DEFAULT"
    description: str = ""
    gradcam: str = ""  # the layer Grad-CAM reads ("" → the last backbone block)
    # the input statistics its ImageNet weights expect (scratch builds use the same, so a model is fed one way)
    normalization: Normalization = "imagenet"
    # other ImageNet sources: (offline) -> RGB, 1000-class state dict in this architecture's key names
    imagenet_loader: Callable[[bool], dict[str, Any]] | None = None
    weights_url: str = ""  # a published weights file (torch hub naming: <name>-<sha256 prefix>.pth)
    imagenet_source: str = ""  # where --pretrained imagenet comes from, in words ("" → torchvision / weights_url)
    gradcam_layout: GradcamLayout = "nchw"  # the layout of the Grad-CAM layer's output

    @property
    def has_imagenet(self) -> bool:
        """Whether --pretrained imagenet is available for this architecture."""
        return bool(self.imagenet or self.imagenet_loader or self.weights_url)


_REGISTRY: dict[str, ModelSpec] = {}
_LAZY: dict[str, Callable[[], ModelSpec]] = {}  # name -> spec factory (imports its library on first use)
_PREFIXES: dict[str, Callable[[str], ModelSpec]] = {}  # "timm/" -> resolver(name after the prefix)
_RESOLVED: dict[str, ModelSpec] = {}  # specs resolved through a prefix, cached (not listed by list_models)
_BUILTINS: list[str] = []  # non-empty once the built-in architectures are (being) registered


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
    normalization: Normalization = "imagenet",
    weights_url: str = "",
) -> Callable[[Callable[[int, int], nn.Module]], Callable[[int, int], nn.Module]]:
    """Decorator registering builder(num_labels, in_chans) under `name`; a duplicate name is an error."""

    def decorate(builder: Callable[[int, int], nn.Module]) -> Callable[[int, int], nn.Module]:
        _check_new(name)
        _REGISTRY[name] = ModelSpec(name, builder, image_size, stem, head, blocks, imagenet, description, gradcam,
                                    normalization, weights_url=weights_url)
        return builder

    return decorate


def _load_builtins() -> None:
    """Import the modules that register the built-in architectures and timm's, once (chestxray.models does not
    import them itself, so that reading a bundle's card needs no torch)."""
    if not _BUILTINS:
        _BUILTINS.append("loading")  # before the imports: their own register_model calls come back here
        import chestxray.models.architectures  # noqa: F401 - registers itself
        import chestxray.models.timm_zoo  # noqa: F401 - registers timm/<name> and efficientnet-lite0, lazily


def _check_new(name: str) -> None:
    _load_builtins()
    if name in _REGISTRY or name in _LAZY:
        raise ModelError(f"model {name!r} is already registered; pick another name")


def register_lazy(name: str, factory: Callable[[], ModelSpec]) -> None:
    """Register `name` whose spec `factory()` builds on first use (for entries whose library imports slowly)."""
    _check_new(name)
    _LAZY[name] = factory


def register_prefix(prefix: str, resolver: Callable[[str], ModelSpec]) -> None:
    """Resolve every name `prefix + rest` with resolver(rest) (e.g. 'timm/' for the whole timm zoo)."""
    _PREFIXES[prefix] = resolver


def list_models() -> list[str]:
    """Names of all registered architectures, sorted (prefixed families such as timm/<name> are not listed)."""
    _load_builtins()
    return sorted({*_REGISTRY, *_LAZY})


def get_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; unknown names list the valid ones and the closest match."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _LAZY:
        _REGISTRY[name] = replace(_LAZY.pop(name)(), name=name)
        return _REGISTRY[name]
    if name in _RESOLVED:
        return _RESOLVED[name]
    for prefix, resolver in _PREFIXES.items():
        if name.startswith(prefix):  # cached apart from _REGISTRY so list_models() stays the registered names
            _RESOLVED[name] = replace(resolver(name[len(prefix):]), name=name)
            return _RESOLVED[name]
    hint = " (or any timm architecture as timm/<name>)" if _PREFIXES else ""
    raise ModelError(
        f"unknown model {name!r}{closest(name, list_models())}; choose one of: {', '.join(list_models())}{hint}"
    )


def check_in_chans(in_chans: int) -> None:
    """Models take 1 (grayscale) or 3 (the grey value replicated) input channels."""
    if in_chans not in (1, 3):
        raise ModelError(f"in_chans must be 1 (grayscale) or 3 (replicated RGB), got {in_chans}")


def model_data_config(name: str, in_chans: int = 1) -> dict[str, Any]:
    """How to feed model `name`: {'in_chans', 'normalization', 'image_size', 'input_mean', 'input_std'}.

    The normalisation follows the weights (the spec's: ImageNet statistics for torchvision and timm ImageNet
    weights, mean = std = 0.5 for EfficientNet-Lite, 'gray' for the small CNNs); input_mean/std are the values
    applied per input channel (1-channel: the RGB averages, which the folded stem expects: chestxray.models.stem).
    """
    spec = get_spec(name)
    check_in_chans(in_chans)
    mean, std = input_stats(spec.normalization, in_chans)
    return {"in_chans": in_chans, "normalization": spec.normalization, "image_size": spec.image_size,
            "input_mean": mean, "input_std": std}


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in net.parameters())


def head_module(net: nn.Module, name: str) -> nn.Module:
    """The classification head of a built model."""
    return net.get_submodule(get_spec(name).head)


def _owns(entry: str, param: str) -> bool:
    """Whether block entry `entry` (a module or parameter name) holds parameter `param`."""
    return param == entry or param.startswith(f"{entry}.")


def backbone_blocks(net: nn.Module, name: str) -> list[list[nn.Module]]:
    """The modules of each backbone stage of a built model, input to output (parameter entries left out)."""
    modules = dict(net.named_modules())
    return [[modules[m] for m in block if m in modules] for block in get_spec(name).blocks]


def block_parameters(net: nn.Module, name: str) -> list[list[nn.Parameter]]:
    """The parameters of each backbone stage of a built model, input to output (what freezing acts on)."""
    named = list(net.named_parameters())
    return [[p for k, p in named if any(_owns(m, k) for m in block)] for block in get_spec(name).blocks]


def backbone_parameter_names(net: nn.Module, name: str) -> set[str]:
    """Qualified names of the parameters inside the backbone stages (the rest is the head)."""
    entries = [m for block in get_spec(name).blocks for m in block]
    return {k for k, _ in net.named_parameters() if any(_owns(m, k) for m in entries)}
