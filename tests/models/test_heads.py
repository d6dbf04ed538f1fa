"""New heads start near zero: a freshly built pretrained model gives |logit| < 0.5 on real X-rays (registry, timm/<name>
and multi-class heads alike), where the architectures' own initialisation did not; from scratch, PyTorch's default
init keeps the outputs small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from chestxray.data.augment import normalize
from chestxray.data.imaging import load_square
from chestxray.errors import ModelError
from chestxray.models import build_model, get_spec, model_data_config
from chestxray.models.weights import imagenet_state, load_weights_into

SIZE = 64


@pytest.fixture(scope="module")
def xrays(shared_data: Path) -> torch.Tensor:
    """16 real chest X-rays (Kaggle and NIH) as uint8 (16, 1, SIZE, SIZE)."""
    kaggle = sorted((shared_data / "kaggle-chest-xray-pneumonia").glob("*/*.jpeg"))[::80][:8]
    nih = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[::100][:8]
    return torch.from_numpy(np.stack([load_square(f, SIZE) for f in [*kaggle, *nih]]))[:, None]


def _logits(net: torch.nn.Module, name: str, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(normalize(images, 1, model_data_config(name)["normalization"]))


@pytest.mark.parametrize("num_labels", [1, 14])
def test_pretrained_lite0_starts_near_zero_on_real_images(xrays: torch.Tensor, num_labels: int) -> None:
    net = build_model("efficientnet-lite0", num_labels, pretrained="imagenet")
    logits = _logits(net, "efficientnet-lite0", xrays)
    assert logits.shape == (len(xrays), num_labels)
    assert logits.abs().max() < 0.5


def test_architecture_init_did_not_start_near_zero(xrays: torch.Tensor) -> None:
    """The cause, kept as a check that the test above can fail: timm's own head init (uniform ±1/sqrt(fan_out),
    ±1 for one output over 1,280 features) on the same pretrained backbone gives logits far from zero."""
    spec = get_spec("efficientnet-lite0")
    torch.manual_seed(0)
    net = spec.builder(1, 1)  # the architecture as timm initialises it, head included
    state, source = imagenet_state("efficientnet-lite0", offline=True)
    load_weights_into(net, spec, state, source)
    assert net.classifier.weight.abs().max() > 0.9
    assert _logits(net, "efficientnet-lite0", xrays).abs().max() > 2.0


def test_pretrained_timm_model_starts_near_zero(tmp_path: Path, xrays: torch.Tensor) -> None:
    """A timm/<name> model with ImageNet weights (Lite0's, saved as a file for timm's own tf_efficientnet_lite0)."""
    rgb = build_model("efficientnet-lite0", 1000, in_chans=3, pretrained="imagenet")
    save_file(rgb.state_dict(), str(tmp_path / "lite0.safetensors"))
    for num_labels in (1, 3):
        net = build_model("timm/tf_efficientnet_lite0", num_labels, weights=tmp_path / "lite0.safetensors")
        assert _logits(net, "timm/tf_efficientnet_lite0", xrays).abs().max() < 0.5
    # from scratch: PyTorch's default U(±1/sqrt(fan_in)) instead of timm's U(±1/sqrt(fan_out)) (±1 for one output)
    scratch = build_model("timm/resnet18", 1)
    assert 0 < scratch.fc.weight.abs().max() <= 512 ** -0.5
    assert _logits(scratch, "timm/resnet18", xrays).abs().max() < 0.5


def test_head_bias_sets_the_starting_logits(xrays: torch.Tensor) -> None:
    bias = [1.05, -2.0, -5.5]
    net = build_model("efficientnet-lite0", 3, pretrained="imagenet", head_bias=bias)
    logits = _logits(net, "efficientnet-lite0", xrays)
    assert torch.allclose(logits, torch.tensor(bias).expand_as(logits))
    with pytest.raises(ModelError, match="head bias of 2 value"):
        build_model("cnn-tiny", 3, head_bias=[0.0, 1.0])


def test_a_loaded_head_of_the_same_size_is_kept(tmp_path: Path) -> None:
    """Weights that carry a head of this size (a checkpoint, ImageNet's 1000 classes) keep it: only new heads are
    initialised."""
    torch.manual_seed(0)
    source = build_model("cnn-tiny", 3)
    with torch.no_grad():
        source.head[4].weight.normal_()
        source.head[4].bias.normal_()
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = build_model("cnn-tiny", 3, weights=tmp_path / "w.safetensors", head_bias=[9.0, 9.0, 9.0])
    assert torch.equal(loaded.head[4].weight, source.head[4].weight)
    assert torch.equal(loaded.head[4].bias, source.head[4].bias)
