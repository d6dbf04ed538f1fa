"""A bundle's network as an ONNX graph: grey levels in, the card's normalisation and sigmoid inside, probabilities
and logits out (the logits give the log-odds that rankings and thresholds use: a float32 probability is exactly 1.0
above a logit of ~17), and optionally the pooled features the OOD probe reads (chestxray.inference.ood.feature_tap)
as more outputs.

Used by `chestxray export` (uint8 input, probabilities and logits: the file users deploy) and by the per-bundle
scoring cache (chestxray.inference.onnx_cache: float32 grey levels, so every TTA view fits, plus the features).
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import torch

from chestxray.data.tasks import probabilities
from chestxray.inference.onnx_model import FEATURE_PREFIX
from chestxray.inference.predict import normalize_for_model
from chestxray.models.bundle import Bundle

OPSET = 18
INPUT, OUTPUT, LOGITS = "pixels", "probabilities", "logits"


def static_same_padding(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """`net`, or a copy of it whose TensorFlow-style 'same' convolutions (timm's Conv2dSame, in tf_* models such as
    EfficientNet-Lite0) pad by constants for inputs shaped like `example`, as the graph's fixed image size allows.

    Conv2dSame computes its pad from the input's shape at every call; exported as is, each becomes a chain of shape
    arithmetic and a Pad that ONNX Runtime can neither fold into the convolution nor run in its blocked NCHWc
    layout, so it converts every such feature map out of that layout and back (Lite0 at 64 px: 40 % of its time).
    A constant pad is folded into the Conv. Same weights, same arithmetic: only where the zeros come from changes."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    if not any(isinstance(m, Conv2dSame) for m in net.modules()):
        return net
    net = copy.deepcopy(net)
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        return lambda module, inputs: sizes.update({name: tuple(inputs[0].shape[-2:])})  # None: inputs unchanged

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in net.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        net(example)
    for hook in hooks:
        hook.remove()
    for name, same in ((n, net.get_submodule(n)) for n in sizes):
        left, right, top, bottom = pad_same_arg(sizes[name], same.weight.shape[-2:], same.stride, same.dilation)
        conv = torch.nn.Conv2d(same.in_channels, same.out_channels, same.kernel_size, same.stride, 0, same.dilation,
                               same.groups, same.bias is not None)
        conv.weight, conv.bias = same.weight, same.bias
        if (left, top) == (right, bottom):
            conv.padding = (top, left)
            static: torch.nn.Module = conv
        else:
            static = torch.nn.Sequential(torch.nn.ZeroPad2d((left, right, top, bottom)), conv)
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, static)
    return net


class ScoringGraph(torch.nn.Module):
    """Grey levels (B, 1, S, S), uint8 or float in [0, 255] → probabilities (B, L) and logits (B, L), normalising as
    the card says (x * scale + shift), probabilities by sigmoid (softmax for a multiclass card). With `features`,
    also each OOD layer's pooled features (B, D), in feature_names order."""

    def __init__(self, bundle: Bundle, features: bool = False) -> None:
        super().__init__()
        zero = normalize_for_model(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), bundle.card)
        one = normalize_for_model(torch.ones(1, 1, 1, 1, dtype=torch.uint8), bundle.card)
        self.register_buffer("shift", zero.reshape(1, -1, 1, 1).clone())
        self.register_buffer("scale", (one - zero).reshape(1, -1, 1, 1).clone())
        size = int(bundle.card["image_size"])
        self.net = static_same_padding(bundle.net.eval(), torch.zeros(1, 1, size, size) * self.scale + self.shift)
        self.task = bundle.card.get("task")
        self.architecture = bundle.card["architecture"] if features else None
        self.feature_names: list[str] = []

    def forward(self, pixels: torch.Tensor) -> Any:
        inputs = pixels.float() * self.scale + self.shift
        if self.architecture is None:
            logits = self.net(inputs).float()
            return probabilities(logits, self.task), logits
        from chestxray.inference.ood import feature_tap

        with feature_tap(self.net, self.architecture, as_tensors=True) as store:
            logits = self.net(inputs).float()
        self.feature_names = list(store)
        return (probabilities(logits, self.task), logits, *(store[name][0] for name in self.feature_names))


def graph_proto(bundle: Bundle, uint8: bool, features: bool = False, opset: int = OPSET, dynamo: bool = False) -> Any:
    """The onnx.ModelProto of ScoringGraph with a dynamic batch axis: input INPUT (uint8 or float32 grey levels),
    outputs OUTPUT, LOGITS and, with `features`, feature.<layer> per OOD layer.

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
    outputs = [OUTPUT, LOGITS, *(FEATURE_PREFIX + name for name in wrapper.feature_names)]
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
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")  # a constant pad's order; ORT folds it
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]})
    return onnx.load_from_string(buffer.getvalue())
