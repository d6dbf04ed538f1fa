"""Attribution: Grad-CAM layer choice, Integrated Gradients completeness, every registered model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chestxray.errors import ConfigError, ModelError
from chestxray.explain.attribution import (
    attribute,
    find_gradcam_layer,
    grad_cam,
    integrated_gradients,
    to_heatmaps,
)
from tests.explain.helpers import SIZE, BrightNet

# ---------- boxes ----------


def test_gradcam_layer_hint_and_errors() -> None:
    net = BrightNet()
    raw = grad_cam(net, torch.rand(2, 1, SIZE, SIZE), target=0)
    assert raw.shape == (2, 1, SIZE, SIZE) and (raw >= 0).all()
    net.gradcam_layer = "0"
    assert find_gradcam_layer(net) is net[0]
    net.gradcam_layer = "nope"
    with pytest.raises(ModelError, match="'nope'"):
        find_gradcam_layer(net)
    with pytest.raises(ModelError, match="no nn.Conv2d"):
        find_gradcam_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1)))
    with pytest.raises(ConfigError, match="did you mean 'ig'"):
        attribute(net, torch.rand(1, 1, SIZE, SIZE), 0, method="igg")


def test_integrated_gradients_shape_and_completeness() -> None:
    gen = torch.Generator().manual_seed(1)
    net = BrightNet().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    inputs = torch.rand(3, 1, SIZE, SIZE, generator=gen) * 2 - 1
    baseline = torch.full_like(inputs, -1.0)
    attr, delta = integrated_gradients(net, inputs, target=1, baselines=baseline, n_steps=32)
    assert attr.shape == inputs.shape
    with torch.no_grad():
        gap = net(inputs)[:, 1] - net(baseline)[:, 1]
    assert gap.abs().min() > 0.01
    assert (delta.abs() < 0.05 * gap.abs() + 1e-3).all()
    assert attr.sum(dim=(1, 2, 3)) == pytest.approx((gap + delta).tolist(), abs=1e-4)
    heat = attribute(net, inputs, 1, "ig", baseline, n_steps=8)
    assert heat.shape == (3, SIZE, SIZE) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)


# ---------- explain_images and the CLI ----------


@pytest.mark.parametrize("name", ["cnn-tiny", "resnet18"])
def test_gradcam_and_ig_run_on_registered_models(name: str) -> None:
    from chestxray.models import build_model

    torch.manual_seed(0)
    net = build_model(name, num_labels=3).eval()
    inputs = torch.rand(1, 1, SIZE, SIZE) * 2 - 1
    for method in ("gradcam", "ig"):
        heat = attribute(net, inputs, target=2, method=method, baselines=torch.full_like(inputs, -1.0), n_steps=4)
        assert heat.shape == (1, SIZE, SIZE) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1


def test_gradcam_of_the_small_cnns_reads_rectified_activations() -> None:
    """Two parametrisations of one function must get one explanation. Moving a per-channel offset from the last
    conv's BatchNorm into that conv (a bias, with the BN's running mean raised to match) leaves every output as it
    was; Grad-CAM on the conv's raw output (the old layer) sees the offset and changes its maps, Grad-CAM on the
    block's ReLU output (the rectified feature maps Selvaraju et al. use) gives the same maps."""
    import copy

    from chestxray.models import build_model

    with torch.device("meta"):
        assert isinstance(find_gradcam_layer(build_model("cnn-small", num_labels=2)), torch.nn.ReLU)
    torch.manual_seed(0)
    net = build_model("cnn-tiny", num_labels=2).eval()
    assert isinstance(find_gradcam_layer(net), torch.nn.ReLU)
    moved = copy.deepcopy(net)
    conv, norm = moved.features[2][0], moved.features[2][1]
    offset = torch.linspace(-2.0, 2.0, conv.out_channels)
    conv.bias = torch.nn.Parameter(offset.clone())
    norm.running_mean += offset
    inputs = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(moved(inputs), net(inputs))  # the same function
    for target in (0, 1):
        np.testing.assert_allclose(attribute(moved, inputs, target), attribute(net, inputs, target), atol=1e-4)
    raw = [to_heatmaps(grad_cam(m, inputs, 0, m.features[2][0])) for m in (net, moved)]
    assert np.abs(raw[0] - raw[1]).max() > 0.1  # the raw conv output is not a faithful layer
