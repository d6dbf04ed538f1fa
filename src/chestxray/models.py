"""Model registry: one factory (build_model) over architectures registered by a decorator, each with its data config.

Every model takes `in_chans` (1: grayscale, the default; 3: replicated RGB) and returns logits (B, num_labels).
Pretrained ImageNet weights come from the local torch hub cache only; 3-channel stem kernels are summed into one
channel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chestxray.errors import ModelError
from chestxray.labels import closest

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


def build_model(
    name: str,
    num_labels: int,
    in_chans: int = 1,
    pretrained: str | None = None,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build a registered architecture returning logits (B, num_labels) for images (B, in_chans, H, W).

    pretrained='imagenet' loads torchvision weights from $TORCH_HOME/hub/checkpoints; `weights` is a local state
    dict (.pth/.pt/.ckpt via torch.load(weights_only=True), or .safetensors). Heads of another size are skipped.
    """
    spec = get_spec(name)
    normalization_for(in_chans)
    if num_labels < 1:
        raise ModelError(f"num_labels must be at least 1, got {num_labels}")
    if pretrained is not None and pretrained not in PRETRAINED_CHOICES:
        raise ModelError(f"unknown pretrained weights {pretrained!r}; choose one of {PRETRAINED_CHOICES} or none")
    if pretrained is not None and weights is not None:
        raise ModelError("give either --pretrained or --weights, not both")
    net = spec.builder(num_labels, in_chans)
    net.gradcam_layer = spec.gradcam or spec.blocks[-1][-1]  # where Grad-CAM reads (a name: a module would be saved twice)
    if pretrained == "imagenet":
        path = imagenet_weights_path(name)
        load_weights_into(net, spec, _read_imagenet(spec, path), source=str(path))
    elif weights is not None:
        load_weights_into(net, spec, read_state_dict(weights), source=str(weights))
    return net


# ---------------------------------------------------------------- weights


def imagenet_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps model `name`'s ImageNet weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    spec = get_spec(name)
    if spec.imagenet is None:
        raise ModelError(f"model {name!r} has no ImageNet weights; train it from scratch or pass --weights FILE")
    enum = _weights_enum(spec)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name


def _weights_enum(spec: ModelSpec):
    import torchvision.models as tvm

    enum_name, member = spec.imagenet.split(".")  # type: ignore[union-attr]
    return getattr(getattr(tvm, enum_name), member)


def _read_imagenet(spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """Torchvision's state dict for the spec, from the local cache only (no download is attempted here)."""
    enum = _weights_enum(spec)
    if not path.exists():
        raise ModelError(
            f"ImageNet weights for {spec.name!r} are not in the local cache: put {path.name} "
            f"(from {enum.url}) into {path.parent} (set TORCH_HOME to use another cache folder), "
            "or pass --weights FILE, or train without --pretrained"
        )
    try:
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # a truncated or foreign file
        raise ModelError(f"{path}: cannot read ImageNet weights ({exc}); delete it and fetch {enum.url} again") from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file loaded with weights_only=True (a Lightning .ckpt too)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot read weights ({exc}); expected a state dict saved with torch.save or safetensors"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    for prefix in ("net.", "module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


_DENSENET_OLD_KEY = re.compile(  # torchvision's 2017 DenseNet files spell 'norm1' as 'norm.1'
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def load_weights_into(net: nn.Module, spec: ModelSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `net`: stem kernels summed (3→1) or spread (1→3), a head of another size skipped.

    Any other missing, unexpected or mis-shaped key raises ModelError naming the keys.
    """
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    own = net.state_dict()
    stem_key = f"{spec.stem}.weight"
    if stem_key in state and stem_key in own and state[stem_key].shape != own[stem_key].shape:
        w = state[stem_key]
        if w.shape[1] == 3 and own[stem_key].shape[1] == 1:
            state[stem_key] = w.sum(dim=1, keepdim=True)
        elif w.shape[1] == 1 and own[stem_key].shape[1] == 3:
            state[stem_key] = w.repeat(1, 3, 1, 1) / 3.0
    head_keys = [k for k in own if k.startswith(f"{spec.head}.")]
    if any(k in state and state[k].shape != own[k].shape for k in head_keys):
        log.info("%s: head has another number of outputs; keeping a new randomly initialised head", source)
        state = {k: v for k, v in state.items() if k not in head_keys}
        expected_missing = set(head_keys)
    else:
        expected_missing = set()
    # Old files (e.g. torchvision's DenseNet) lack BatchNorm's num_batches_tracked; it is only a counter.
    missing = [k for k in own
               if k not in state and k not in expected_missing and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ModelError(
            f"{source}: weights do not fit model {spec.name!r}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}, {len(shapes)} shape mismatch(es) {shapes[:3]}; "
            f"pass weights saved from the same architecture ({spec.name})"
        )
    net.load_state_dict(state, strict=False)


# ---------------------------------------------------------------- helpers for finetuning


def head_module(net: nn.Module, name: str) -> nn.Module:
    """The classification head of a built model."""
    return net.get_submodule(get_spec(name).head)


def backbone_blocks(net: nn.Module, name: str) -> list[list[nn.Module]]:
    """The backbone stages of a built model, input to output (each a list of modules)."""
    return [[net.get_submodule(m) for m in block] for block in get_spec(name).blocks]


# ---------------------------------------------------------------- architectures


def _set_submodule(net: nn.Module, qualified: str, module: nn.Module) -> None:
    parent, _, attr = qualified.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def _adapt(net: nn.Module, stem: str, head: str, num_labels: int, in_chans: int) -> nn.Module:
    """Swap a torchvision net's stem conv for `in_chans` inputs and its head Linear for `num_labels` outputs."""
    conv: nn.Conv2d = net.get_submodule(stem)  # type: ignore[assignment]
    if conv.in_channels != in_chans:
        _set_submodule(net, stem, nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride,
                                            conv.padding, bias=conv.bias is not None))
    fc: nn.Linear = net.get_submodule(head)  # type: ignore[assignment]
    _set_submodule(net, head, nn.Linear(fc.in_features, num_labels))
    return net


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU–pool blocks and a dropout MLP head; a fast baseline for 64 px images."""

    def __init__(self, num_labels: int, in_chans: int = 1, width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_block(in_chans, width), _conv_block(width, 2 * width),
                                      _conv_block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, 2 * width), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(2 * width, num_labels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float → logits (B, num_labels)."""
        return self.head(self.pool(self.features(images)))


_CNN_BLOCKS = (("features.0",), ("features.1",), ("features.2",))


@register_model("cnn-small", image_size=64, stem="features.0.0", head="head.4", blocks=_CNN_BLOCKS,
                gradcam="features.2.0", description="3 conv blocks + MLP head (~0.1 M parameters), for 64 px")
def _cnn_small(num_labels: int, in_chans: int) -> nn.Module:
    return SmallCNN(num_labels, in_chans)


@register_model("cnn-tiny", image_size=32, stem="features.0.0", head="head.4", blocks=_CNN_BLOCKS,
                gradcam="features.2.0", description="a 8-channel cnn-small for tests and smoke runs")
def _cnn_tiny(num_labels: int, in_chans: int) -> nn.Module:
    return SmallCNN(num_labels, in_chans, width=8, dropout=0.0)


_RESNET_BLOCKS = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


@register_model("resnet18", image_size=224, stem="conv1", head="fc", blocks=_RESNET_BLOCKS,
                imagenet="ResNet18_Weights.DEFAULT", description="torchvision ResNet-18 (11 M parameters)")
def _resnet18(num_labels: int, in_chans: int) -> nn.Module:
    from torchvision.models import resnet18

    return _adapt(resnet18(weights=None), "conv1", "fc", num_labels, in_chans)


@register_model("resnet50", image_size=224, stem="conv1", head="fc", blocks=_RESNET_BLOCKS,
                imagenet="ResNet50_Weights.DEFAULT", description="torchvision ResNet-50 (24 M parameters)")
def _resnet50(num_labels: int, in_chans: int) -> nn.Module:
    from torchvision.models import resnet50

    return _adapt(resnet50(weights=None), "conv1", "fc", num_labels, in_chans)


_DENSENET_BLOCKS = (("features.conv0", "features.norm0"),
                    ("features.denseblock1", "features.transition1"),
                    ("features.denseblock2", "features.transition2"),
                    ("features.denseblock3", "features.transition3"),
                    ("features.denseblock4", "features.norm5"))


@register_model("densenet121", image_size=224, stem="features.conv0", head="classifier", blocks=_DENSENET_BLOCKS,
                imagenet="DenseNet121_Weights.DEFAULT", description="torchvision DenseNet-121, as in CheXNet (7 M)")
def _densenet121(num_labels: int, in_chans: int) -> nn.Module:
    from torchvision.models import densenet121

    return _adapt(densenet121(weights=None), "features.conv0", "classifier", num_labels, in_chans)


@register_model("efficientnet_b0", image_size=224, stem="features.0.0", head="classifier.1",
                blocks=tuple((f"features.{i}",) for i in range(9)),
                imagenet="EfficientNet_B0_Weights.DEFAULT", description="torchvision EfficientNet-B0 (4 M parameters)")
def _efficientnet_b0(num_labels: int, in_chans: int) -> nn.Module:
    from torchvision.models import efficientnet_b0

    return _adapt(efficientnet_b0(weights=None), "features.0.0", "classifier.1", num_labels, in_chans)
