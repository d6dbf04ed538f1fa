"""Explain a bundle's predictions on image files or a split: heatmaps, overlays and scores against expert boxes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from chestxray.data.labels import closest
from chestxray.data.tasks import probabilities
from chestxray.errors import ConfigError, DataError, ModelError
from chestxray.explain.attribution import METHODS, attribute, render_overlay, save_png
from chestxray.explain.localize import (
    box_mask,
    boxes_for,
    localization_scores,
    read_boxes,
    rows_to_boxes,
)
from chestxray.files import write_csv
from chestxray.inference.predict import (
    as_bundle,
    load_model_input,
    normalize_for_model,
    predict_split,
    resolve_device,
    score_columns,
)
from chestxray.models.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class ExplainResult:
    """One explained (image, label): the heatmap (H, W) in [0, 1] at the model's input size and where its overlay went."""

    path: Path
    image_id: str
    label: str
    probability: float
    method: str
    heatmap: np.ndarray
    overlay: Path
    scores: dict[str, float] = field(default_factory=dict)


def prepare_input(path: Path, card: dict) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
    """Load an image file as the bundle's model sees it: (gray uint8 (S, S), float input (1, C, S, S), file size (w, h))."""
    gray = load_model_input(path, card)  # the same decode + resize as prepare and predict_images
    inputs = normalize_for_model(torch.from_numpy(gray)[None, None], card)
    return gray, inputs, _file_size(path)


def _file_size(path: Path) -> tuple[int, int]:
    """The stored (w, h) of an image file, read from its header (Pillow, else the DICOM Rows/Columns)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        pass
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        return int(ds.Columns), int(ds.Rows)
    except (InvalidDicomError, OSError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot read the image size from its header ({exc}); boxes cannot be placed, "
                        "re-export the file as PNG") from None


def black_baseline(card: dict, size: int) -> torch.Tensor:
    """A black image (uint8 zeros) normalised like the bundle's inputs: the IG starting point."""
    return normalize_for_model(torch.zeros(1, 1, size, size, dtype=torch.uint8), card)


def explain_images(
    bundle: Bundle | str | Path,
    images: Sequence[str | Path],
    method: str = "gradcam",
    label: str | None = None,
    out_dir: str | Path = "explain",
    boxes: pd.DataFrame | str | Path | None = None,
    n_steps: int = 16,
    top_percent: float = 20.0,
) -> list[ExplainResult]:
    """Explain each image (label: given, else its boxed findings, else the top-scoring label); write overlays and scores.csv."""
    if method not in METHODS:
        raise ConfigError(f"explain method {method!r} is not one of {list(METHODS)}{closest(method, METHODS)}")
    model = as_bundle(bundle)
    labels = list(model.card["labels"])
    if label is not None and label not in labels:
        raise ConfigError(f"label {label!r} is not one of the model's labels {labels}{closest(label, labels)}")
    table = read_boxes(boxes) if isinstance(boxes, (str, Path)) else boxes
    device = resolve_device()
    net = model.net.to(device).eval()
    size = int(model.card["image_size"])
    mode = model.card.get("resize", "pad")
    base = black_baseline(model.card, size).to(device) if method == "ig" else None
    out = Path(out_dir)
    results: list[ExplainResult] = []
    for path in map(Path, images):
        gray, inputs, file_size = prepare_input(path, model.card)
        inputs = inputs.to(device)
        with torch.no_grad():
            probs = probabilities(net(inputs).float(), model.card.get("task"))[0].cpu().numpy()
        rows = boxes_for(table, path.name) if table is not None else None
        boxed = [n for n in dict.fromkeys(rows["label"]) if n in labels] if rows is not None else []
        for name in [label] if label else boxed or [labels[int(probs.argmax())]]:
            target = labels.index(name)
            heatmap = attribute(net, inputs, target, method, base, n_steps)[0]
            found = rows_to_boxes(rows[rows["label"] == name], file_size, size, mode) if rows is not None else []
            scores = localization_scores(heatmap, box_mask(found, heatmap.shape), top_percent) if found else {}
            title = f"{name} p={probs[target]:.2f} ({method})"
            overlay = save_png(render_overlay(gray, heatmap, title, found), out / f"{path.stem}_{name}_{method}.png")
            results.append(ExplainResult(path, path.name, name, float(probs[target]), method, heatmap, overlay, scores))
    write_csv(out / "scores.csv", scores_table(results))
    log.info("explained %d image(s) with %s into %s", len(results), method, out)
    return results


def scores_table(results: Sequence[ExplainResult]) -> pd.DataFrame:
    """One row per result: image, label, probability, method, overlay path and its localisation scores (NaN without a box)."""
    rows = [
        {"image_id": r.image_id, "path": str(r.path), "label": r.label, "probability": r.probability,
         "method": r.method, "overlay": str(r.overlay), **r.scores}
        for r in results
    ]
    return pd.DataFrame(rows, columns=["image_id", "path", "label", "probability", "method", "overlay"] if not rows else None)


def summarize_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Mean localisation scores per label and over all boxed rows ('ALL'): n boxed maps, n_empty of them empty.

    Empty maps (no signal) score NaN and are left out of the means: they are reported as a count, never as hits.
    """
    score_cols = [c for c in table.columns if c in ("pointing_hit", "energy_in_box", "box_fraction") or c.startswith("iou_top")]
    if "box_fraction" not in score_cols:
        return pd.DataFrame(columns=["label", "n", "n_empty"])
    boxed = table.dropna(subset=["box_fraction"])
    if boxed.empty:
        return pd.DataFrame(columns=["label", "n", "n_empty", *score_cols])
    empty = boxed["empty_map"].fillna(0).astype(bool) if "empty_map" in boxed else boxed["pointing_hit"].isna()
    boxed = boxed.assign(_empty=empty.astype(int))
    per_label = boxed.groupby("label")[score_cols].mean()
    per_label.insert(0, "n_empty", boxed.groupby("label")["_empty"].sum())
    per_label.insert(0, "n", boxed.groupby("label").size())
    overall = pd.DataFrame([[len(boxed), int(boxed["_empty"].sum()), *boxed[score_cols].mean().tolist()]],
                           columns=["n", "n_empty", *score_cols], index=["ALL"])
    return pd.concat([per_label, overall]).rename_axis("label").reset_index()


def explain_target(target: str | Path) -> tuple[Path, Path]:
    """(bundle folder, default output folder) for a RUN (RUN/bundle, RUN/explain) or a BUNDLE (BUNDLE/../explain)."""
    folder = Path(target)
    if (folder / "bundle" / "card.json").exists():
        return folder / "bundle", folder / "explain"
    if (folder / "card.json").exists():
        return folder, folder.parent / "explain"
    raise ModelError(f"{folder}: neither a run folder (with bundle/card.json) nor a model bundle (with card.json)")


def select_split_images(bundle: Bundle, split: str = "test", n: int = 8, boxes: pd.DataFrame | None = None,
                        scores: pd.DataFrame | None = None) -> list[Path]:
    """First n images of the bundle's prepared split that have boxes, or (no boxes) its n top-scoring positives.

    scores: predictions of that split already made (predict_split's columns, e.g. RUN/eval/predictions.csv);
    predicted here when not given.
    """
    from chestxray.data.catalog import load_catalog
    from chestxray.data.shards import MANIFEST, read_manifest

    prepared = bundle.card.get("prepared")
    if not prepared or not (Path(prepared) / MANIFEST).exists():
        raise ConfigError(f"{bundle.path}: card names no prepared dataset ({prepared!r}); pass IMAGES instead of --split")
    manifest = read_manifest(prepared)
    table = load_catalog(manifest["catalog"]).table
    rows = table[table["split"] == split]
    if rows.empty:
        raise ConfigError(f"{prepared}: split {split!r} has no images (splits: {sorted(set(table['split']))})")
    if boxes is not None:
        names = set(boxes["image_id"])
        rows = rows[rows["path"].map(lambda p: Path(p).name in names)]
        return [Path(p) for p in rows["path"].head(n)]
    labels = list(bundle.labels)
    if scores is None:
        scores = predict_split(bundle, prepared, split)
    truth = scores[labels].to_numpy(dtype=bool)
    best = np.where(truth, scores[score_columns(labels)].to_numpy(dtype=float), -np.inf).max(axis=1)
    top = scores.assign(best=best)[np.isfinite(best)].nlargest(n, "best")["image_id"]
    paths = rows.set_index("image_id")["path"]
    return [Path(paths[i]) for i in top if i in paths.index]
