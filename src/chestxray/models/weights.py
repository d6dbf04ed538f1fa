"""Weights for registered models: torchvision ImageNet files from the torch hub cache, local state dicts (never
unpickled: weights_only=True or safetensors), and loading them with stem adaptation and strict key/shape checks."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from chestxray.errors import ModelError
from chestxray.models.registry import ModelSpec, get_spec

log = logging.getLogger(__name__)


def imagenet_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps model `name`'s ImageNet weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    spec = get_spec(name)
    if spec.imagenet is None:
        raise ModelError(f"model {name!r} has no ImageNet weights; train it from scratch or pass --weights FILE")
    enum = _weights_enum(spec)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name


def _weights_enum(spec: ModelSpec):
    import torchvision.models as tvm

    enum_name, member = spec.imagenet.split(".")  # type: ignore[union-attr]
    return getattr(getattr(tvm, enum_name), member)


def _read_imagenet(spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """Torchvision's state dict for the spec, from the local cache only (no download is attempted here)."""
    enum = _weights_enum(spec)
    if not path.exists():
        raise ModelError(
            f"ImageNet weights for {spec.name!r} are not in the local cache: put {path.name} "
            f"(from {enum.url}) into {path.parent} (set TORCH_HOME to use another cache folder), "
            "or pass --weights FILE, or train without --pretrained"
        )
    try:
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # a truncated or foreign file
        raise ModelError(f"{path}: cannot read ImageNet weights ({exc}); delete it and fetch {enum.url} again") from exc


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
    """Load `state` into `net`: stem kernels summed (3→1) or spread (1→3), a head of another size skipped.

    Any other missing, unexpected or mis-shaped key raises ModelError naming the keys.
    """
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    own = net.state_dict()
    stem_key = f"{spec.stem}.weight"
    if stem_key in state and stem_key in own and state[stem_key].shape != own[stem_key].shape:
        w = state[stem_key]
        if w.shape[1] == 3 and own[stem_key].shape[1] == 1:
            state[stem_key] = w.sum(dim=1, keepdim=True)
        elif w.shape[1] == 1 and own[stem_key].shape[1] == 3:
            state[stem_key] = w.repeat(1, 3, 1, 1) / 3.0
    head_keys = [k for k in own if k.startswith(f"{spec.head}.")]
    if any(k in state and state[k].shape != own[k].shape for k in head_keys):
        log.info("%s: head has another number of outputs; keeping a new randomly initialised head", source)
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
