"""Grad-CAM++, Score-CAM (pytorch-grad-cam) and occlusion (Captum): pytorch-grad-cam's Grad-CAM is ours to r > 0.999 on
real X-rays, so the family is one implementation's; each method finds the evidence where a model is built to have it;
occlusion equals the logit drop it is defined by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chestxray.explain.attribution import METHODS, attribute, grad_cam, library_cam, occlusion, to_heatmaps
from tests.explain.helpers import SIZE, blob


def _xrays(shared_data: Path, size: int = 64, n: int = 6) -> torch.Tensor:
    files = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[:n]
    pixels = [np.asarray(Image.open(f).convert("L").resize((size, size), Image.BILINEAR), np.float32) / 255
              for f in files]
    return (torch.from_numpy(np.stack(pixels))[:, None] - 0.5) / 0.25


@pytest.mark.parametrize("name", ["cnn-small", "resnet18"])
def test_pytorch_grad_cam_gives_our_gradcam_maps(name: str, shared_data: Path) -> None:
    from chestxray.models import build_model

    torch.manual_seed(0)
    net = build_model(name, num_labels=3).eval()
    inputs = _xrays(shared_data)
    for target in (0, 2):
        ours = to_heatmaps(grad_cam(net, inputs.clone().requires_grad_(True), target))
        theirs = library_cam(net, inputs, target, "gradcam-lib")
        assert theirs.shape == ours.shape == (len(inputs), 64, 64)
        for a, b in zip(ours, theirs):
            if a.max() == 0:  # an empty map (no positive evidence): the library's is empty too
                assert b.max() < 1e-6
                continue
            r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            assert r > 0.999, (name, target, r)


class QuadrantNet(torch.nn.Module):
    """Logit 0 = mean brightness of the top-left quadrant through a conv layer: its evidence lives there only (the
    quadrant is taken before the conv, so the CAM methods, which weight whole channels, can see it too)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 1, 1] = 1.0
            self.conv.bias.zero_()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., : SIZE // 2, : SIZE // 2] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x * self.mask))
        score = features.mean(dim=(1, 2, 3))
        return torch.stack([score, -score], dim=1)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "occlusion"])
def test_each_method_finds_the_evidence_where_it_is(method: str) -> None:
    net = QuadrantNet().eval()
    image = blob((8, 8)) + blob((24, 24))  # a bright spot in the top-left and one in the bottom-right quadrant
    inputs = torch.from_numpy(image)[None, None]
    heat = attribute(net, inputs, 0, method)
    assert heat.shape == (1, SIZE, SIZE) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1 + 1e-6
    inside = heat[0, : SIZE // 2, : SIZE // 2].sum()
    assert inside / heat.sum() > 0.9, (method, inside / heat.sum())  # the other spot counts for nothing
    assert np.unravel_index(heat[0].argmax(), heat[0].shape) in {(y, x) for y in range(4, 13) for x in range(4, 13)}


def test_occlusion_is_the_logit_drop_of_its_window() -> None:
    net = QuadrantNet().eval()
    inputs = torch.from_numpy(blob((8, 8)))[None, None]
    attr = occlusion(net, inputs, 0, parts=8)  # window 4 px, stride 2
    with torch.no_grad():
        full = net(inputs)[0, 0]
        hidden = inputs.clone()
        hidden[..., 6:10, 6:10] = 0
        drop = full - net(hidden)[0, 0]
    assert drop > 0
    # Captum averages, per pixel, the drops of every window covering it; the pixel (7, 7) lies in 4 windows
    drops = []
    for top in (4, 6):
        for left in (4, 6):
            h = inputs.clone()
            h[..., top:top + 4, left:left + 4] = 0
            with torch.no_grad():
                drops.append(float(full - net(h)[0, 0]))
    assert float(attr[0, 0, 7, 7]) == pytest.approx(np.mean(drops), rel=1e-5)


def test_every_method_runs_on_a_registered_model_and_for_the_evidence_against() -> None:
    from chestxray.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn-tiny", num_labels=2).eval()
    inputs = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    for method in METHODS:
        for sign in (1, -1):
            heat = attribute(net, inputs.clone(), 1, method, torch.full_like(inputs, -1.0), n_steps=4, sign=sign)
            assert heat.shape == (2, SIZE, SIZE) and np.isfinite(heat).all(), method
            assert 0 <= heat.min() and heat.max() <= 1 + 1e-6, method
