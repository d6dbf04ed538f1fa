"""Grad-CAM on token and channels-last layers: the map is laid out on the patch grid the right way round, prefix
tokens are dropped, and a layer that is not in its registered layout is one clear error suggesting IG."""

from __future__ import annotations

import pytest
import torch
from timm.layers import PatchEmbed

from chestxray.errors import ModelError
from chestxray.explain.attribution import grad_cam
from chestxray.explain.layouts import spatial_probe
from chestxray.models import build_model

PATCH = 8


class TokenNet(torch.nn.Module):
    """A ViT's shape with no mixing: a class token, patch tokens, and a logit that sums the tokens' features."""

    gradcam_layer = "norm1"
    gradcam_layout = "tokens"
    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size=None, patch_size=PATCH, in_chans=1, embed_dim=3, bias=False)
        torch.nn.init.constant_(self.patch_embed.proj.weight, 1.0 / PATCH**2)  # each token: its patch's mean, x3
        self.cls_token = torch.nn.Parameter(torch.full((1, 1, 3), 5.0))  # large: must not reach the map
        self.norm1 = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = self.norm1(torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1))
        return tokens.sum(dim=(1, 2))[:, None]


class ChannelsLastNet(torch.nn.Module):
    """A Swin's shape: a stage whose output is (B, H, W, C), pooled into one logit."""

    gradcam_layer = "stage"
    gradcam_layout = "nhwc"

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(1, 3, PATCH, stride=PATCH, bias=False)
        torch.nn.init.constant_(self.proj.weight, 1.0 / PATCH**2)
        self.stage = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(self.proj(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)).sum(dim=1, keepdim=True)


@pytest.mark.parametrize("cell", [(0, 4), (2, 1), (3, 5)])
@pytest.mark.parametrize("model", [TokenNet, ChannelsLastNet])
def test_cam_peaks_on_the_patch_that_drives_the_logit(model: type[torch.nn.Module], cell: tuple[int, int]) -> None:
    """A bright patch at (row, col) of a 4 x 6 grid: the map (input-sized, 32 x 48) peaks on that patch alone."""
    image = torch.zeros(1, 1, 4 * PATCH, 6 * PATCH)
    r, c = cell
    image[..., r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = 1.0
    cam = grad_cam(model(), image, target=0)[0, 0]
    assert cam.shape == (4 * PATCH, 6 * PATCH) and torch.isfinite(cam).all()
    cells = cam.reshape(4, PATCH, 6, PATCH).mean(dim=(1, 3))
    assert divmod(int(cells.argmax()), 6) == cell
    y, x = divmod(int(cam.argmax()), cam.shape[1])
    assert (y // PATCH, x // PATCH) == cell and cells.flatten().sort().values[-2] < 0.5 * cells.max()


def test_timm_vit_cam_is_laid_out_on_its_patch_grid() -> None:
    """timm's ViT at 64 x 96 (patch 16): the CAM reads a (B, 64, 4, 6) grid, and the map is input-sized."""
    net = build_model("timm/test_vit", num_labels=2).eval()
    image = torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(0))
    seen: list[tuple[int, ...]] = []
    with spatial_probe(net, net.get_submodule(net.gradcam_layer), "tokens", (64, 96)) as probe:
        probe.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
        logits = net(image)
    assert seen == [(2, 64, 4, 6)]
    torch.testing.assert_close(logits, net(image))  # the probe leaves the logits as they were
    cam = grad_cam(net, image, target=1)
    assert cam.shape == (2, 1, 64, 96) and torch.isfinite(cam).all()
    assert all(m.max() > m.min() for m in cam)


def test_layer_not_in_its_layout_is_one_clear_error() -> None:
    net = TokenNet()
    net.gradcam_layout = "nchw"
    with pytest.raises(ModelError, match=r"gives \(1, 25, 3\), not the nchw layout .* use --method ig"):
        grad_cam(net, torch.rand(1, 1, 32, 48), target=0)
    net.gradcam_layout = "tokens"
    net.num_prefix_tokens = 2  # 24 patch tokens read as 23: no grid fits
    with pytest.raises(ModelError, match=r"cannot lay the 25 tokens of TokenNet out .* use --method ig"):
        grad_cam(net, torch.rand(1, 1, 32, 48), target=0)
