"""Attribution maps for any model (overlays: explain.overlay), each from a maintained library:

- gradcam: Grad-CAM (Selvaraju et al. 2017) by Captum's LayerGradCam;
- gradcam++ and scorecam: Grad-CAM++ (Chattopadhay et al. 2018) and Score-CAM (Wang et al. 2020) by pytorch-grad-cam
  (`pip install grad-cam`), on the same layer; its GradCAM gives the same maps as Captum's (Pearson r > 0.999 on real
  X-rays, tests/explain/test_cam_methods.py), so the family is one implementation's;
- ig: Integrated Gradients by Captum, from a black image (uint8 zeros, normalised like the input);
- occlusion: Captum's Occlusion (Zeiler & Fergus 2014): the drop in the logit when a square of the input (an eighth
  of its side, half-overlapping) is replaced by the black baseline. pytorch-grad-cam has no image occlusion (its
  AblationCAM removes feature channels), hence Captum's.

Heatmaps are the positive evidence for one label's logit, at the model's input size, scaled to [0, 1] per image.
The CAM methods use the model's `gradcam_layer` hint when it has one, else its last nn.Conv2d, and read it in the
layout of its `gradcam_layout` hint (transformer tokens and channels-last stages are laid out as (B, C, h, w)
first: explain.layouts).
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
METHODS = ("gradcam", "gradcam++", "scorecam", "ig", "occlusion")
CAM_METHODS = ("gradcam++", "scorecam")  # through pytorch-grad-cam
OCCLUSION_PARTS = 8  # occlusion window: 1/8 of the input side, stride half of it


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


class _Logit:
    """pytorch-grad-cam target: logit `index` of the model output, times `sign` (-1: the evidence against)."""

    def __init__(self, index: int, sign: int = 1) -> None:
        self.index, self.sign = index, sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * (output[self.index] if output.dim() == 1 else output[:, self.index])


def library_cam(net: torch.nn.Module, inputs: torch.Tensor, target: int, method: str = "gradcam++",
                layer: torch.nn.Module | None = None, sign: int = 1) -> np.ndarray:
    """(B, H, W) maps in [0, 1] of logit `target` by pytorch-grad-cam's GradCAM ('gradcam-lib', for the parity
    test), GradCAMPlusPlus ('gradcam++') or ScoreCAM ('scorecam'), on the same layer and layout as grad_cam."""
    try:
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    except ImportError as exc:
        raise ConfigError(f"--method {method} needs pytorch-grad-cam: pip install grad-cam") from exc
    import contextlib
    import io

    cams = {"gradcam-lib": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}
    _no_inplace(net)
    layer = layer if layer is not None else find_gradcam_layer(net)
    layout = getattr(net, "gradcam_layout", "nchw")
    with spatial_probe(net, layer, layout, (inputs.shape[-2], inputs.shape[-1])) as probe, \
            cams[method](model=net, target_layers=[probe]) as cam, contextlib.redirect_stderr(io.StringIO()):
        maps = cam(input_tensor=inputs, targets=[_Logit(target, sign)] * len(inputs))  # Score-CAM's tqdm: silenced
    return np.asarray(maps, dtype=np.float32)


def occlusion(net: torch.nn.Module, inputs: torch.Tensor, target: int, baselines: torch.Tensor | None = None,
              parts: int = OCCLUSION_PARTS) -> torch.Tensor:
    """Captum's Occlusion attributions (same shape as inputs) of logit `target`: a window of side/parts pixels
    sliding by half of it, replaced by `baselines` (default zeros)."""
    from captum.attr import Occlusion

    channels, height, width = inputs.shape[1:]
    side = max(1, min(height, width) // parts)
    stride = max(1, side // 2)
    base = torch.zeros_like(inputs) if baselines is None else baselines
    with torch.no_grad():
        attr = Occlusion(net).attribute(inputs, sliding_window_shapes=(channels, side, side),
                                        strides=(channels, stride, stride), baselines=base, target=target,
                                        perturbations_per_eval=max(1, 64 // len(inputs)))
    return attr.detach()


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
    """(B, H, W) heatmaps in [0, 1] of logit `target` by one of METHODS (baselines: the IG start point and the
    occlusion fill, default zeros); sign -1: the evidence against the finding (a CAM of the negated logit; IG's and
    occlusion's negative attributions)."""
    if method == "gradcam":
        return to_heatmaps(grad_cam(net, inputs, target, sign=sign))
    if method in CAM_METHODS:
        return library_cam(net, inputs.detach(), target, method, sign=sign)
    if method == "occlusion":
        return to_heatmaps(occlusion(net, inputs.detach(), target, baselines) * sign)
    if method == "ig":
        attr, delta = integrated_gradients(net, inputs, target, baselines, n_steps)
        log.debug("IG completeness error %s", delta.abs().max().item())
        return to_heatmaps(attr * sign)
    raise ConfigError(f"explain method {method!r} is not one of {list(METHODS)}{closest(method, METHODS)}")
