"""Registered architectures: every entry builds and trains a step, data configs, names and Grad-CAM layers."""

from __future__ import annotations

import pytest
import torch

from chestxray.errors import ModelError
from chestxray.models import (
    build_model,
    get_spec,
    list_models,
    model_data_config,
    register_model,
)

BIG = {"resnet50", "densenet121", "efficientnet_b0", "efficientnet-lite0"}
HUGE = {"resnet152"}  # built on the meta device only (a CPU forward/backward would cost the suite ~30 s)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", [n for n in list_models() if n not in HUGE])
def test_every_model_runs_forward_and_backward(name: str, in_chans: int) -> None:
    size = 32 if name in BIG or name == "resnet18" else 64
    net = build_model(name, num_labels=3, in_chans=in_chans)
    images = torch.randn(2, in_chans, size, size)
    head = net.get_submodule(get_spec(name).head)
    # a new head from scratch: PyTorch's default U(±1/sqrt(fan_in)) (small outputs, a gradient for the backbone)
    assert not head.bias.any() and head.weight.abs().max() <= head.weight[0].numel() ** -0.5
    logits = net(images)
    assert logits.shape == (2, 3)
    logits.square().mean().backward()
    stem = net.get_submodule(get_spec(name).stem)
    assert stem.weight.shape[1] == in_chans
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.out_features == 3


@pytest.mark.parametrize("name", sorted(HUGE))
def test_huge_models_build_with_adapted_stem_and_head(name: str) -> None:
    with torch.device("meta"):
        net = build_model(name, num_labels=3, in_chans=1)
    spec = get_spec(name)
    assert net.get_submodule(spec.stem).weight.shape[1] == 1 and net.get_submodule(spec.head).out_features == 3
    assert net.get_submodule(net.gradcam_layer) is not None


def test_data_config_follows_the_weights() -> None:
    """ImageNet statistics for torchvision weights (averaged for one channel), 0.5/0.5 for Lite and the small CNNs."""
    assert model_data_config("densenet121") == {"in_chans": 1, "normalization": "imagenet", "image_size": 224,
                                                "input_mean": [0.449], "input_std": [0.226]}
    assert model_data_config("densenet121", in_chans=3)["input_std"] == [0.229, 0.224, 0.225]
    assert model_data_config("efficientnet-lite0")["input_mean"] == [0.5]
    assert model_data_config("cnn-small", in_chans=3)["normalization"] == "gray"
    with pytest.raises(ModelError, match="in_chans must be 1"):
        model_data_config("cnn-small", in_chans=2)


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'densenet12' \(did you mean 'densenet121'\?\).*resnet18"):
        build_model("densenet12", num_labels=2)
    with pytest.raises(ModelError, match="already registered"):
        register_model("resnet18", image_size=8, stem="a", head="b", blocks=())(lambda n, c: torch.nn.Identity())


def test_every_model_names_a_gradcam_layer_outside_its_weights() -> None:
    from chestxray.models import build_model, list_models

    for name in list_models():
        with torch.device("meta"):
            net = build_model(name, num_labels=2)
        layer = net.get_submodule(net.gradcam_layer)
        assert any(m is layer for m in net.modules()), name
        assert not any(k.startswith("gradcam") for k in net.state_dict()), name
