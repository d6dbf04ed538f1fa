"""Models: architectures registered by name, their weights, and the model bundle.

`build_model(name, num_labels, in_chans)` returns a net giving logits (B, num_labels) for images (B, C, H, W);
each registered spec names its stem, head, backbone stages and Grad-CAM layer, so freezing, weight loading and
explanations need no per-model code. `weights` loads ImageNet or local weights safely; `bundle` saves a trained
model as safetensors + a JSON card (labels, preprocessing, thresholds) that later stages load without unpickling.

The names below are loaded on first use (PEP 562), so `chestxray.models.card` can be read without importing torch:
a bundle whose ONNX graph is cached is scored without it. The registry loads the built-in architectures itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers, editors and the API docs see; at run time __getattr__ below loads them
    from chestxray.models.factory import build_model
    from chestxray.models.registry import (
        ModelSpec,
        backbone_blocks,
        backbone_parameter_names,
        block_parameters,
        count_parameters,
        get_spec,
        head_module,
        list_models,
        model_data_config,
        register_model,
    )

_FROM = {"build_model": "chestxray.models.factory",
         **{name: "chestxray.models.registry" for name in (
             "ModelSpec", "backbone_blocks", "backbone_parameter_names", "block_parameters", "count_parameters",
             "get_spec", "head_module", "list_models", "model_data_config", "register_model")}}

__all__ = sorted(_FROM)


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_FROM[name]), name)
