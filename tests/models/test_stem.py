"""The 1-channel stem fold: a grey image through the folded 1-channel model equals the RGB model on the image
replicated into RGB (per-channel ImageNet statistics), at the first layer and at the output; and back 1 → 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chestxray.data.augment import input_stats, normalize
from chestxray.data.imaging import load_square
from chestxray.models import ModelSpec, build_model, get_spec
from chestxray.models.stem import fold_rgb_kernel, norm_after_stem, spread_gray_kernel
from chestxray.models.weights import load_weights_into

SIZE = 64


def _gray_images(shared_data: Path, n: int = 4) -> torch.Tensor:
    """n real Kaggle X-rays as uint8 (n, 1, SIZE, SIZE)."""
    files = sorted((shared_data / "kaggle-chest-xray-pneumonia").glob("*/*.jpeg"))[:: 97][:n]
    return torch.from_numpy(np.stack([load_square(f, SIZE) for f in files]))[:, None]


def _rgb_reference(name: str, num_labels: int = 3) -> nn.Module:
    """A 3-channel model of `name` with random weights, a random (non-zero) head and non-trivial BatchNorm
    statistics, in eval mode: the stand-in for an ImageNet checkpoint (the fold does not depend on the values)."""
    torch.manual_seed(0)
    net = build_model(name, num_labels, in_chans=3)
    with torch.no_grad():
        head = net.get_submodule(get_spec(name).head)
        head.weight.normal_(0, 0.05)
        head.bias.normal_(0, 0.05)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _grey_padded_rgb(net3: nn.Module, stem: str, images: torch.Tensor, normalization: str) -> torch.Tensor:
    """The RGB model's logits on the grey images replicated into RGB, its stem's zero padding replaced by padding
    the pixels with the mean grey (what the 1-channel model's padding is): the function the fold must equal."""
    conv: nn.Conv2d = net3.get_submodule(stem)
    (gray_mean,), _ = input_stats(normalization, 1)
    ph, pw = conv.padding
    pixels = images.float() / 255.0
    padded = F.pad(pixels, (pw, pw, ph, ph), value=gray_mean)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in input_stats(normalization, 3))
    rgb = (padded.expand(-1, 3, -1, -1) - mean) / std
    conv.padding = (0, 0)
    try:
        return net3(rgb)
    finally:
        conv.padding = (ph, pw)


def _first_layer(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    out = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, a, o: out.setdefault("y", o))
    try:
        net(x)
    finally:
        handle.remove()
    return out["y"]


@pytest.mark.parametrize(("name", "norm_layer"), [("resnet18", "bn1"), ("densenet121", "features.norm0"),
                                                  ("timm/resnet18", "bn1")])
def test_folded_stem_equals_rgb_model_on_replicated_grey(shared_data: Path, name: str, norm_layer: str) -> None:
    spec = get_spec(name)
    assert spec.normalization == "imagenet"  # unequal channel statistics: the case the plain sum got wrong
    net3 = _rgb_reference(name)
    net1 = build_model(name, 3, in_chans=1)
    load_weights_into(net1, spec, net3.state_dict(), source="test")
    net1.eval()
    images = _gray_images(shared_data)
    with torch.no_grad():
        x1 = normalize(images, 1, spec.normalization)
        x3 = normalize(images, 3, spec.normalization)
        # the first layer (stem + the BatchNorm that took the offset), away from the padded border: exact
        first1, first3 = _first_layer(net1, norm_layer, x1), _first_layer(net3, norm_layer, x3)
        inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
        assert (first1[inner] - first3[inner]).abs().max() < 1e-4
        # the output: exact against the RGB model given the same grey border
        reference = _grey_padded_rgb(net3, spec.stem, images, spec.normalization)
        assert (net1(x1) - reference).abs().max() < 1e-4
        # and the old rule (kernels summed, offset dropped) was far off at the first layer
        summed = net3.state_dict()[f"{spec.stem}.weight"].sum(1, keepdim=True)
        net1.get_submodule(spec.stem).weight.copy_(summed)
        net1.get_submodule(norm_layer).running_mean.copy_(net3.get_submodule(norm_layer).running_mean)
        old = _first_layer(net1, norm_layer, x1)
        assert (old[inner] - first3[inner]).abs().max() > 100 * (first1[inner] - first3[inner]).abs().max()


def test_fold_with_equal_statistics_is_the_plain_sum() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3)
    folded, offset = fold_rgb_kernel(w, (0.5,) * 3, (0.5,) * 3, 0.5, 0.5)
    assert torch.allclose(folded, w.sum(1, keepdim=True))
    assert torch.equal(offset, torch.zeros(8))


def test_spread_then_fold_gives_back_the_grey_kernel() -> None:
    """1 → 3 (a grey checkpoint into an RGB model) is exact without an offset; folding it back is the identity."""
    torch.manual_seed(0)
    w1 = torch.randn(8, 1, 3, 3)
    mean, std = input_stats("imagenet", 3)
    (m,), (s,) = input_stats("imagenet", 1)
    w3 = spread_gray_kernel(w1, std, s)
    back, offset = fold_rgb_kernel(w3, mean, std, m, s)
    assert torch.allclose(back, w1, atol=1e-6)
    assert offset.abs().max() < 1e-5  # m is the mean of the m_c (to the 6 decimals input_stats keeps)
    g = torch.rand(2, 1, 16, 16)
    x3 = (g.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(F.conv2d(x3, w3), F.conv2d((g - m) / s, w1), atol=1e-5)


def test_offset_goes_to_the_stem_bias_when_there_is_one() -> None:
    """A stem with a bias (ConvNeXt-style) takes the offset there: the first layer is exact (inside the border)."""
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    grey = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    spec = ModelSpec(name="toy", builder=lambda n, c: grey, image_size=16, stem="0", head="2", blocks=(("0",),))
    load_weights_into(grey, spec, rgb.state_dict(), source="toy")
    g = torch.rand(2, 1, 16, 16)
    mean, std = input_stats("imagenet", 3)
    (m,), (s,) = input_stats("imagenet", 1)
    x3 = (g.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert (grey[0]((g - m) / s) - rgb[0](x3))[..., 1:-1, 1:-1].abs().max() < 1e-5


def test_norm_after_stem_needs_the_stem_output_itself() -> None:
    direct = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    assert norm_after_stem(direct, "0", 1) == "1"
    activated = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(4))
    assert norm_after_stem(activated, "0", 1) is None
