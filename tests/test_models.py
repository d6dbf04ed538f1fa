"""Model registry: every entry builds and trains a step; pretrained/--weights loading adapts the stem; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from chestxray.errors import ModelError
from chestxray.models import (
    build_model,
    get_spec,
    imagenet_weights_path,
    list_models,
    model_data_config,
    register_model,
)

BIG = {"resnet50", "densenet121", "efficientnet_b0"}


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward(name: str, in_chans: int) -> None:
    size = 32 if name in BIG or name == "resnet18" else 64
    net = build_model(name, num_labels=3, in_chans=in_chans)
    images = torch.randn(2, in_chans, size, size)
    logits = net(images)
    assert logits.shape == (2, 3)
    logits.square().mean().backward()
    stem = net.get_submodule(get_spec(name).stem)
    head = net.get_submodule(get_spec(name).head)
    assert stem.weight.shape[1] == in_chans
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.out_features == 3


def test_data_config_follows_channels() -> None:
    assert model_data_config("densenet121") == {"in_chans": 1, "normalization": "gray", "image_size": 224}
    assert model_data_config("cnn-small", in_chans=3)["normalization"] == "imagenet"
    with pytest.raises(ModelError, match="in_chans must be 1"):
        model_data_config("cnn-small", in_chans=2)


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'densenet12' \(did you mean 'densenet121'\?\).*resnet18"):
        build_model("densenet12", num_labels=2)
    with pytest.raises(ModelError, match="already registered"):
        register_model("resnet18", image_size=8, stem="a", head="b", blocks=())(lambda n, c: torch.nn.Identity())


def _torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    """A state dict in torchvision's own format (3-channel stem, 1000-class fc), random values."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).state_dict()


def _check_loaded(net: torch.nn.Module, state: dict[str, torch.Tensor], in_chans: int) -> None:
    expected_stem = state["conv1.weight"].sum(dim=1, keepdim=True) if in_chans == 1 else state["conv1.weight"]
    assert torch.equal(net.conv1.weight, expected_stem)
    assert torch.equal(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(net.bn1.running_var, state["bn1.running_var"])
    assert net.fc.weight.shape == (2, 512)  # new head for 2 labels


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
    assert torch.equal(net.features.conv0.weight, state["features.conv0.weight"].sum(1, keepdim=True))


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


def test_every_model_names_a_gradcam_layer_outside_its_weights() -> None:
    from chestxray.models import build_model, list_models

    for name in list_models():
        net = build_model(name, num_labels=2)
        layer = net.get_submodule(net.gradcam_layer)
        assert any(m is layer for m in net.modules()), name
        assert not any(k.startswith("gradcam") for k in net.state_dict()), name
