"""Expert boxes and localisation scores: how well an attribution heatmap points at the annotated finding.

Boxes are read from the NIH file BBox_List_2017.csv(.gz) (coordinates in the 1024x1024 PNG frame) or from a
synthetic boxes.csv (Image Index, Finding Label, x, y, w, h in the image's own pixels), mapped onto the
prepared square image with the same geometry as chestxray.data.imaging.fit_square, and scored with pure functions.

A map with no signal (flat: all zero, or every pixel equal, as Grad-CAM gives when no feature supports the label) is
"empty": every score is NaN ("n/a (empty map)"), never a hit or a miss. When several pixels tie for the maximum,
the pointing game scores the fraction of tied maxima inside the box: the expected hit of breaking the tie at random,
so a plateau that straddles the box earns partial credit and no tie counts as a hit by itself.
A box that covers no pixel of the model's input (the centre crop cut it away: expert boxes near the edge of a wide
image) cannot be scored either: every score is NaN and the row is flagged box_cut ("n/a (box cut away)"), never a miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.labels import canonical_label
from chestxray.errors import ConfigError, DataError

NIH_FRAME = 1024.0
BOX_COLUMNS = ["image_id", "label", "x", "y", "w", "h", "frame_w", "frame_h"]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of some frame: top-left (x, y), width w, height h."""

    x: float
    y: float
    w: float
    h: float


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Expert boxes as a table (columns BOX_COLUMNS; frame_w/frame_h NaN = the image's own pixels), labels canonical."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: boxes file not found; pass the NIH BBox_List_2017.csv(.gz) or a synthetic boxes.csv")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from exc
    cols = list(raw.columns)
    for needed in ("Image Index", "Finding Label"):
        if needed not in cols:
            raise DataError(f"{path}: no column {needed!r} (found: {cols}); expected NIH BBox_List or synthetic boxes.csv")
    bbox_col = next((c for c in cols if c.startswith("Bbox")), None)
    if bbox_col is not None:  # NIH layout: the box spans the Bbox column and the three unnamed ones after it
        start = cols.index(bbox_col)
        if len(cols) < start + 4:
            raise DataError(f"{path}: column {bbox_col!r} should be followed by three more box columns (found: {cols})")
        coords = raw.iloc[:, start : start + 4].to_numpy(dtype=float)
        frame = NIH_FRAME
    else:
        missing = [c for c in ("x", "y", "w", "h") if c not in cols]
        if missing:
            raise DataError(f"{path}: no box column(s) {missing} (found: {cols}); need 'Bbox [x,y,w,h]' or x, y, w, h")
        coords = raw[["x", "y", "w", "h"]].to_numpy(dtype=float)
        frame = np.nan
    bad = ~np.isfinite(coords).all(axis=1) | (coords[:, 2] <= 0) | (coords[:, 3] <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 2
        raise DataError(f"{path}: row {row}: box must have finite x, y and positive w, h (got {coords[bad][0].tolist()})")
    table = pd.DataFrame(
        {
            "image_id": raw["Image Index"].astype(str).str.strip(),
            "label": raw["Finding Label"].astype(str).map(canonical_label),
            "x": coords[:, 0],
            "y": coords[:, 1],
            "w": coords[:, 2],
            "h": coords[:, 3],
            "frame_w": frame,
            "frame_h": frame,
        }
    )
    return table[BOX_COLUMNS]


def boxes_for(boxes: pd.DataFrame, image_id: str, label: str | None = None) -> pd.DataFrame:
    """Rows of `boxes` for one image (matched by file name, or by stem when the name has another extension)."""
    name = Path(image_id).name
    ids = boxes["image_id"]
    rows = boxes[ids == name]
    if rows.empty:
        rows = boxes[ids.map(lambda s: Path(s).stem) == Path(name).stem]
    if label is not None:
        rows = rows[rows["label"] == label]
    return rows


def fit_square_box(box: Box, image_w: int, image_h: int, size: int, mode: str = "crop") -> Box:
    """Map a box in an image of image_w x image_h onto fit_square(img, size, mode): centred letterbox, centre crop,
    or each side scaled on its own (stretch)."""
    if mode not in ("pad", "crop", "stretch"):
        raise ConfigError(f"resize mode {mode!r} is not one of 'crop', 'pad', 'stretch'")
    if mode == "stretch":
        sx, sy = size / image_w, size / image_h
        return Box(box.x * sx, box.y * sy, box.w * sx, box.h * sy)
    scale = size / (max(image_w, image_h) if mode == "pad" else min(image_w, image_h))
    off_x = (size - image_w * scale) / 2.0
    off_y = (size - image_h * scale) / 2.0
    return Box(box.x * scale + off_x, box.y * scale + off_y, box.w * scale, box.h * scale)


def scale_box(
    box: Box, frame: tuple[float, float] | None, image_size: tuple[int, int], size: int, mode: str = "crop"
) -> Box:
    """Box from its frame (w, h; None = the image's pixels) into the prepared size x size image of an image_size (w, h) file."""
    image_w, image_h = image_size
    if frame is not None:
        sx, sy = image_w / frame[0], image_h / frame[1]
        box = Box(box.x * sx, box.y * sy, box.w * sx, box.h * sy)
    return fit_square_box(box, image_w, image_h, size, mode)


def rows_to_boxes(rows: pd.DataFrame, image_size: tuple[int, int], size: int, mode: str = "crop") -> list[Box]:
    """Boxes of a boxes table's rows, mapped into the prepared size x size image."""
    out = []
    for r in rows.itertuples(index=False):
        frame = None if np.isnan(r.frame_w) else (float(r.frame_w), float(r.frame_h))
        out.append(scale_box(Box(r.x, r.y, r.w, r.h), frame, image_size, size, mode))
    return out


def box_mask(boxes: list[Box], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres fall inside any box (clipped to the image)."""
    height, width = shape
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for b in boxes:
        mask |= (xs >= b.x) & (xs < b.x + b.w) & (ys >= b.y) & (ys < b.y + b.h)
    return mask


def is_empty_map(heatmap: np.ndarray) -> bool:
    """True when the heatmap carries no signal: non-finite values, or every pixel equal (all-zero included)."""
    if heatmap.size == 0 or not np.isfinite(heatmap).all():
        return True
    return bool(heatmap.max() <= heatmap.min())


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heatmap's tied maxima inside the mask (1.0/0.0 for one peak); NaN for an empty map or mask."""
    _check(heatmap, mask)
    if is_empty_map(heatmap) or not mask.any():
        return float("nan")
    peak = heatmap == heatmap.max()
    return float((peak & mask).sum() / peak.sum())


def topk_iou(heatmap: np.ndarray, mask: np.ndarray, top_percent: float = 20.0) -> float:
    """IoU of the mask with the heatmap thresholded to its top `top_percent` % of pixels; NaN for an empty map or
    mask."""
    _check(heatmap, mask)
    if not 0 < top_percent <= 100:
        raise ConfigError(f"top_percent must be in (0, 100], got {top_percent}")
    if is_empty_map(heatmap) or not mask.any():
        return float("nan")
    k = max(1, int(round(heatmap.size * top_percent / 100.0)))
    order = np.argsort(heatmap.ravel(), kind="stable")[::-1][:k]
    hot = np.zeros(heatmap.size, dtype=bool)
    hot[order] = True
    hot = hot.reshape(heatmap.shape)
    union = (hot | mask).sum()
    return float((hot & mask).sum() / union) if union else 0.0


def energy_in_box(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heatmap's positive mass inside the mask (NaN for an empty map or mask)."""
    _check(heatmap, mask)
    if is_empty_map(heatmap) or not mask.any():
        return float("nan")
    positive = np.clip(heatmap, 0, None)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else float("nan")


def localization_scores(heatmap: np.ndarray, mask: np.ndarray, top_percent: float = 20.0) -> dict[str, float]:
    """Pointing-game hit, top-k% IoU, energy inside the box, the box's area fraction (the uniform-map baseline), and
    two flags: empty_map (no signal) and box_cut (the box covers no pixel of the input); either makes the scores NaN."""
    return {
        "empty_map": float(is_empty_map(heatmap)),
        "box_cut": float(not mask.any()),
        "pointing_hit": pointing_hit(heatmap, mask),
        f"iou_top{top_percent:g}": topk_iou(heatmap, mask, top_percent),
        "energy_in_box": energy_in_box(heatmap, mask),
        "box_fraction": float(mask.mean()),
    }


def _check(heatmap: np.ndarray, mask: np.ndarray) -> None:
    if heatmap.ndim != 2 or heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must be the same 2-D shape")
