"""Export a bundle to ONNX: uint8 pixels in, probabilities out, the card's preprocessing inside the graph.

The graph takes the decoded, resized image as uint8 (batch, 1, S, S) — the same pixels prepare stores — applies
the card's normalisation and the sigmoid itself, and has a dynamic batch axis. The whole card (labels,
thresholds, image_size, resize, normalization) travels in the ONNX metadata under "chestxray_card", so
`chestxray predict model.onnx …` needs onnxruntime only.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from chestxray.data.tasks import probabilities
from chestxray.errors import ModelError
from chestxray.files import atomic_path
from chestxray.inference.predict import as_bundle, normalize_for_model
from chestxray.models.bundle import Bundle

log = logging.getLogger(__name__)

OPSET = 18
INPUT, OUTPUT = "pixels", "probabilities"
CARD_KEY = "chestxray_card"
PREPROCESSING_KEY = "preprocessing"


class _Deployed(torch.nn.Module):
    """uint8 (B, 1, S, S) → probabilities (B, L), normalising as the card says (x * scale + shift), then sigmoid
    (softmax for a multiclass card)."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        zero = normalize_for_model(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), bundle.card)
        one = normalize_for_model(torch.ones(1, 1, 1, 1, dtype=torch.uint8), bundle.card)
        self.register_buffer("shift", zero.reshape(1, -1, 1, 1).clone())
        self.register_buffer("scale", (one - zero).reshape(1, -1, 1, 1).clone())
        self.net = bundle.net.eval()
        self.task = bundle.card.get("task")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return probabilities(self.net(pixels.float() * self.scale + self.shift), self.task)


def preprocessing_text(card: dict) -> str:
    """The preprocessing a caller must do before the graph, in words (stored in the ONNX metadata)."""
    return (f"decode to 8-bit grayscale, resize to {card['image_size']}x{card['image_size']} "
            f"({card.get('resize', 'pad')}: chestxray.data.imaging.load_square), feed uint8 "
            f"({INPUT}: batch x 1 x {card['image_size']} x {card['image_size']}); normalisation "
            f"'{card['normalization']}' to {card['in_chans']} channel(s) and the "
            f"{'softmax' if card.get('task') == 'multiclass' else 'sigmoid'} are inside the graph")


def _to_proto(wrapper: torch.nn.Module, example: torch.Tensor, opset: int, dynamo: bool):
    """The ONNX ModelProto of the wrapped model with a dynamic batch axis.

    dynamo=False uses the TorchScript exporter (seconds; PyTorch marks it deprecated but ships it), dynamo=True
    the torch.export one (PyTorch's default since 2.9; ~15 s even for a tiny CNN on two CPU cores).
    """
    import io

    import onnx

    if dynamo:
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes={INPUT: {0: torch.export.Dim("batch", min=1, max=4096)}}, external_data=False,
            verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its deprecation
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(bundle: Bundle | str | Path, out: str | Path, opset: int = OPSET, dynamo: bool = False,
                site: str | None = None) -> Path:
    """Write the bundle as an ONNX model (dynamic batch, `opset`, card in the metadata); returns the file.

    `site`: a site profile stored beside the bundle (chestxray calibrate) travels in the metadata too
    (SITE_KEY), and whoever runs the file with chestxray gets the site's probabilities and thresholds."""
    import onnx

    from chestxray.inference.site import SITE_KEY, load_site

    model = as_bundle(bundle)
    profile = load_site(model.path, site, model.card) if site else None
    wrapper = _Deployed(model).eval()
    size = int(model.card["image_size"])
    example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ModelError(f"{out}: an ONNX export needs a file name ending in .onnx")
    try:
        proto = _to_proto(wrapper, example, opset, dynamo)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types; the user needs the model and reason
        raise ModelError(f"{model.path}: ONNX export of {model.card['architecture']!r} failed "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from exc
    card = {k: v for k, v in model.card.items() if k != "prepared"}
    meta = [(CARD_KEY, json.dumps(card, default=str)), (PREPROCESSING_KEY, preprocessing_text(card))]
    if profile is not None:
        meta.append((SITE_KEY, json.dumps(profile.to_dict())))
    for key, value in meta:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "chestxray"
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
    log.info("exported %s to %s (opset %d)", model.path, out, opset)
    return out
