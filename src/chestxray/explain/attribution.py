"""Attribution maps: Grad-CAM and Integrated Gradients heatmaps (Captum), for any model (overlays: explain.overlay).

Heatmaps are the positive evidence for one label's logit, upsampled to the model's input size and scaled to
[0, 1] per image. Grad-CAM uses the model's `gradcam_layer` hint when it has one, else its last nn.Conv2d, and
reads it in the layout of its `gradcam_layout` hint (transformer tokens and channels-last stages are laid out as
(B, C, h, w) first: explain.layouts); Integrated Gradients starts from a black image (uint8 zeros, normalised like the
input).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from chestxray.data.labels import closest
from chestxray.errors import ConfigError, ModelError
from chestxray.explain.layouts import spatial_probe
from chestxray.explain.overlay import render_overlay, save_png  # noqa: F401 - kept importable from here

log = logging.getLogger(__name__)
METHODS = ("gradcam", "ig")


def find_gradcam_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The layer Grad-CAM reads: the net's `gradcam_layer` (a module or dotted name) if set, else its last nn.Conv2d."""
    hint = getattr(net, "gradcam_layer", None)
    if isinstance(hint, torch.nn.Module):
        return hint
    if isinstance(hint, str):
        try:
            return net.get_submodule(hint)
        except AttributeError as exc:
            raise ModelError(f"model's gradcam_layer {hint!r} is not one of its submodules") from exc
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(net).__name__} has no nn.Conv2d layer for Grad-CAM; use method 'ig' or set net.gradcam_layer")
    return convs[-1]


def _no_inplace(net: torch.nn.Module) -> None:
    """Switch off in-place activations, which break the gradients Captum's hooks capture (outputs are unchanged)."""
    for module in net.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False


def grad_cam(net: torch.nn.Module, inputs: torch.Tensor, target: int, layer: torch.nn.Module | None = None,
             sign: int = 1) -> torch.Tensor:
    """Grad-CAM (B, 1, H, W) of logit `target` for inputs (B, C, H, W), ReLU'd and bilinearly upsampled to H x W.

    sign -1 explains the negated logit: the evidence AGAINST the finding (regions whose activations push its score
    down), which is what carries information for an image the model scores negative, where the evidence-for map is
    often empty. The layer's output is read as laid out by the net's `gradcam_layout` ('nchw' by default, 'nhwc',
    'tokens'); an output not in that layout is a ModelError suggesting Integrated Gradients.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    _no_inplace(net)
    layer = layer if layer is not None else find_gradcam_layer(net)
    layout = getattr(net, "gradcam_layout", "nchw")
    forward = net if sign > 0 else (lambda x: -net(x))
    with spatial_probe(net, layer, layout, (inputs.shape[-2], inputs.shape[-1])) as probe:
        attr = LayerGradCam(forward, probe).attribute(inputs, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(inputs.shape[-2:]), interpolate_mode="bilinear").detach()


def integrated_gradients(
    net: torch.nn.Module, inputs: torch.Tensor, target: int, baselines: torch.Tensor | None = None, n_steps: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG attributions (same shape as inputs) of logit `target` and Captum's completeness error per image."""
    from captum.attr import IntegratedGradients

    _no_inplace(net)
    ig = IntegratedGradients(net)
    base = torch.zeros_like(inputs) if baselines is None else baselines
    attr, delta = ig.attribute(inputs, baselines=base, target=target, n_steps=n_steps, return_convergence_delta=True)
    return attr.detach(), delta.detach()


def to_heatmaps(attributions: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) attributions -> (B, H, W) float32 maps: channel sum, positive part, scaled to max 1 per image."""
    maps = attributions.sum(dim=1).clamp(min=0).cpu().numpy().astype(np.float32)
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    return maps / np.where(peaks > 0, peaks, 1.0)[:, None, None]


def attribute(
    net: torch.nn.Module, inputs: torch.Tensor, target: int, method: str = "gradcam",
    baselines: torch.Tensor | None = None, n_steps: int = 16, sign: int = 1,
) -> np.ndarray:
    """(B, H, W) heatmaps in [0, 1] of logit `target` by 'gradcam' or 'ig' (baselines: IG start point, default zeros);
    sign -1: the evidence against the finding (Grad-CAM of the negated logit; IG's negative attributions)."""
    if method == "gradcam":
        return to_heatmaps(grad_cam(net, inputs, target, sign=sign))
    if method == "ig":
        attr, delta = integrated_gradients(net, inputs, target, baselines, n_steps)
        log.debug("IG completeness error %s", delta.abs().max().item())
        return to_heatmaps(attr * sign)
    raise ConfigError(f"explain method {method!r} is not one of {list(METHODS)}{closest(method, METHODS)}")
