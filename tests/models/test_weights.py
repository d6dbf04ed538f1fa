"""Model weights: ImageNet from the hub cache, --weights files (.pth, .safetensors), legacy keys, clear mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from chestxray.errors import ModelError
from chestxray.models import (
    build_model,
)
from chestxray.models.stem import fold_rgb_kernel
from chestxray.models.weights import imagenet_weights_path

IMAGENET_RGB = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _folded(rgb_kernel: torch.Tensor) -> torch.Tensor:
    """The 1-channel stem kernel the exact fold gives for ImageNet statistics (grey: their averages)."""
    return fold_rgb_kernel(rgb_kernel, *IMAGENET_RGB, 0.449, 0.226)[0]


def _torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    """A state dict in torchvision's own format (3-channel stem, 1000-class fc), random values."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).state_dict()


def _check_loaded(net: torch.nn.Module, state: dict[str, torch.Tensor], in_chans: int) -> None:
    expected_stem = _folded(state["conv1.weight"]) if in_chans == 1 else state["conv1.weight"]
    assert torch.equal(net.conv1.weight, expected_stem)
    assert torch.equal(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(net.bn1.running_var, state["bn1.running_var"])
    # the 1-channel fold moves the mean offset into the BatchNorm after the stem (ResNet's conv1 has no bias)
    assert torch.equal(net.bn1.running_mean, state["bn1.running_mean"]) == (in_chans == 3)
    assert net.fc.weight.shape == (2, 512)  # new head for 2 labels
    assert not net.fc.weight.any() and not net.fc.bias.any()  # new heads start silent


def test_imagenet_from_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = imagenet_weights_path("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ModelError, match=r"put resnet18-f37072fd\.pth .* into .*hub/checkpoints"):
        build_model("resnet18", num_labels=2, pretrained="imagenet")
    state = _torchvision_resnet18_state()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    _check_loaded(build_model("resnet18", num_labels=2, in_chans=1, pretrained="imagenet"), state, 1)
    _check_loaded(build_model("resnet18", num_labels=2, in_chans=3, pretrained="imagenet"), state, 3)
    with pytest.raises(ModelError, match="no ImageNet weights"):
        build_model("cnn-small", num_labels=2, pretrained="imagenet")


def test_weights_file_pth_and_safetensors(tmp_path: Path) -> None:
    state = _torchvision_resnet18_state()
    torch.save(state, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    _check_loaded(build_model("resnet18", num_labels=2, weights=tmp_path / "w.pth"), state, 1)
    _check_loaded(build_model("resnet18", num_labels=2, weights=tmp_path / "w.safetensors"), state, 1)


def test_densenet_legacy_keys_are_mapped(tmp_path: Path) -> None:
    from torchvision.models import densenet121

    state = densenet121(weights=None).state_dict()
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}  # as in the real 2017 file
    assert legacy.keys() != state.keys()
    torch.save(legacy, tmp_path / "densenet121-a639ec97.pth")
    net = build_model("densenet121", num_labels=2, weights=tmp_path / "densenet121-a639ec97.pth")
    assert torch.equal(net.features.conv0.weight, _folded(state["features.conv0.weight"]))


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    state = _torchvision_resnet18_state()
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(ModelError, match=r"r18\.pth: weights do not fit model 'resnet50'.*missing key"):
        build_model("resnet50", num_labels=2, weights=tmp_path / "r18.pth")
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match=r"1 shape mismatch.*layer1\.0\.conv1\.weight \(64, 64, 1, 1\)"):
        build_model("resnet18", num_labels=2, weights=tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights"):
        build_model("resnet18", num_labels=2, weights=tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="no such weights file"):
        build_model("resnet18", num_labels=2, weights=tmp_path / "missing.pth")
