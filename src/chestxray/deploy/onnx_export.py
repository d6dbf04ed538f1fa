"""Export a bundle to ONNX: uint8 pixels in, probabilities out, the card's preprocessing inside the graph.

The graph takes the decoded, resized image as uint8 (batch, 1, S, S) — the same pixels prepare stores — applies
the card's normalisation and the sigmoid itself, and has a dynamic batch axis. The whole card (labels,
thresholds, image_size, resize, normalization) travels in the ONNX metadata under "chestxray_card", so
`chestxray predict model.onnx …` needs onnxruntime only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from chestxray.errors import ModelError
from chestxray.files import atomic_path
from chestxray.inference.onnx_graph import INPUT, OPSET, OUTPUT, graph_proto  # noqa: F401 (public here too)
from chestxray.inference.predict import as_bundle
from chestxray.models.bundle import Bundle

log = logging.getLogger(__name__)

CARD_KEY = "chestxray_card"
PREPROCESSING_KEY = "preprocessing"


def preprocessing_text(card: dict) -> str:
    """The preprocessing a caller must do before the graph, in words (stored in the ONNX metadata)."""
    return (f"decode to 8-bit grayscale, resize to {card['image_size']}x{card['image_size']} "
            f"({card.get('resize', 'pad')}: chestxray.data.imaging.load_square), feed uint8 "
            f"({INPUT}: batch x 1 x {card['image_size']} x {card['image_size']}); normalisation "
            f"'{card['normalization']}' to {card['in_chans']} channel(s) and the "
            f"{'softmax' if card.get('task') == 'multiclass' else 'sigmoid'} are inside the graph")


def export_onnx(bundle: Bundle | str | Path, out: str | Path, opset: int = OPSET, dynamo: bool = False,
                site: str | None = None) -> Path:
    """Write the bundle as an ONNX model (dynamic batch, `opset`, card in the metadata); returns the file.

    `site`: a site profile stored beside the bundle (chestxray calibrate) travels in the metadata too
    (SITE_KEY), and whoever runs the file with chestxray gets the site's probabilities and thresholds."""
    import onnx

    from chestxray.inference.site import SITE_KEY, load_site

    model = as_bundle(bundle)
    profile = load_site(model.path, site, model.card) if site else None
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ModelError(f"{out}: an ONNX export needs a file name ending in .onnx")
    try:
        proto = graph_proto(model, uint8=True, opset=opset, dynamo=dynamo)
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
