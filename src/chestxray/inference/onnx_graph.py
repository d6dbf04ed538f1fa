"""A bundle's network as an ONNX graph: grey levels in, the card's normalisation and sigmoid inside, probabilities
out, and optionally the pooled features the OOD probe reads (chestxray.inference.ood.feature_tap) as more outputs.

Used by `chestxray export` (uint8 input, probabilities only: the file users deploy) and by the per-bundle scoring
cache (chestxray.inference.onnx_cache: float32 grey levels, so every TTA view fits, plus the features).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch

from chestxray.data.tasks import probabilities
from chestxray.inference.onnx_model import FEATURE_PREFIX
from chestxray.inference.predict import normalize_for_model
from chestxray.models.bundle import Bundle

OPSET = 18
INPUT, OUTPUT = "pixels", "probabilities"


class ScoringGraph(torch.nn.Module):
    """Grey levels (B, 1, S, S), uint8 or float in [0, 255] → probabilities (B, L), normalising as the card says
    (x * scale + shift), then sigmoid (softmax for a multiclass card). With `features`, also each OOD layer's pooled
    features (B, D), in feature_names order."""

    def __init__(self, bundle: Bundle, features: bool = False) -> None:
        super().__init__()
        zero = normalize_for_model(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), bundle.card)
        one = normalize_for_model(torch.ones(1, 1, 1, 1, dtype=torch.uint8), bundle.card)
        self.register_buffer("shift", zero.reshape(1, -1, 1, 1).clone())
        self.register_buffer("scale", (one - zero).reshape(1, -1, 1, 1).clone())
        self.net = bundle.net.eval()
        self.task = bundle.card.get("task")
        self.architecture = bundle.card["architecture"] if features else None
        self.feature_names: list[str] = []

    def forward(self, pixels: torch.Tensor) -> Any:
        inputs = pixels.float() * self.scale + self.shift
        if self.architecture is None:
            return probabilities(self.net(inputs), self.task)
        from chestxray.inference.ood import feature_tap

        with feature_tap(self.net, self.architecture, as_tensors=True) as store:
            probs = probabilities(self.net(inputs), self.task)
        self.feature_names = list(store)
        return (probs, *(store[name][0] for name in self.feature_names))


def graph_proto(bundle: Bundle, uint8: bool, features: bool = False, opset: int = OPSET, dynamo: bool = False) -> Any:
    """The onnx.ModelProto of ScoringGraph with a dynamic batch axis: input INPUT (uint8 or float32 grey levels),
    outputs OUTPUT and, with `features`, feature.<layer> per OOD layer.

    dynamo=False uses the TorchScript exporter (seconds; PyTorch marks it deprecated but ships it), dynamo=True
    the torch.export one (PyTorch's default since 2.9; ~15 s even for a tiny CNN on two CPU cores).
    """
    import onnx

    wrapper = ScoringGraph(bundle, features).eval()
    size = int(bundle.card["image_size"])
    example = torch.zeros(2, 1, size, size, dtype=torch.uint8 if uint8 else torch.float32)
    if features:
        with torch.no_grad():
            wrapper(example)  # learns the feature layer names
    outputs = [OUTPUT, *(FEATURE_PREFIX + name for name in wrapper.feature_names)]
    if dynamo:
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=outputs,
            dynamic_shapes={INPUT: {0: torch.export.Dim("batch", min=1, max=4096)}}, external_data=False,
            verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-dependent Python branches in timm models
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]})
    return onnx.load_from_string(buffer.getvalue())
