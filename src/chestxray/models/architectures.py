"""Architectures in the registry: a small CNN baseline and torchvision ResNet, DenseNet (CheXNet) and EfficientNet,
adapted to `in_chans` inputs and `num_labels` logits."""

from __future__ import annotations

import torch
from torch import nn

from chestxray.models.registry import register_model


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
                gradcam="features.2.2", normalization="gray",
                description="3 conv blocks + MLP head (~0.1 M parameters), for 64 px")
def _cnn_small(num_labels: int, in_chans: int) -> nn.Module:
    return SmallCNN(num_labels, in_chans)


@register_model("cnn-tiny", image_size=32, stem="features.0.0", head="head.4", blocks=_CNN_BLOCKS,
                gradcam="features.2.2", normalization="gray", description="a 8-channel cnn-small for tests and smoke runs")
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


@register_model("resnet152", image_size=224, stem="conv1", head="fc", blocks=_RESNET_BLOCKS,
                imagenet="ResNet152_Weights.DEFAULT",
                description="torchvision ResNet-152 (58 M parameters), the pneumonia study's backbone family")
def _resnet152(num_labels: int, in_chans: int) -> nn.Module:
    from torchvision.models import resnet152

    return _adapt(resnet152(weights=None), "conv1", "fc", num_labels, in_chans)


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
