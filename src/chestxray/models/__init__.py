"""Models: architectures registered by name, their weights, and the model bundle.

`build_model(name, num_labels, in_chans)` returns a net giving logits (B, num_labels) for images (B, C, H, W);
each registered spec names its stem, head, backbone stages and Grad-CAM layer, so freezing, weight loading and
explanations need no per-model code. `weights` loads ImageNet or local weights safely; `bundle` saves a trained
model as safetensors + a JSON card (labels, preprocessing, thresholds) that later stages load without unpickling.
"""

from chestxray.models import architectures  # noqa: F401  (registers the built-in architectures)
from chestxray.models import timm_zoo  # noqa: F401  (registers timm/<name> and efficientnet-lite0, lazily)
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

__all__ = ["ModelSpec", "backbone_blocks", "backbone_parameter_names", "block_parameters",
           "build_model", "count_parameters", "get_spec", "head_module",
           "list_models", "model_data_config", "register_model"]
