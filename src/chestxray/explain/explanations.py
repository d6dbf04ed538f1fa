"""Explain a bundle's predictions on image files or a split: heatmaps, overlays and scores against expert boxes.

Each explain run writes into its own folder (explain_folder: RUN/explain/<split>-<method>[-<label>][-boxes]) holding
settings.json (what was explained, how, when), scores.csv (one row per image and label: probability, threshold,
truth, TP/FP/FN/TN, localisation scores) and the overlays; re-running the same settings replaces that folder's
files, so overlays of different runs never mix. From a split, images are chosen by outcome at the stored thresholds
(select_split_targets: true positives, false positives and false negatives by default), or those with expert boxes.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from chestxray.data.labels import closest
from chestxray.data.tasks import is_multiclass
from chestxray.errors import ConfigError, DataError, ModelError
from chestxray.explain.attribution import METHODS, attribute
from chestxray.explain.coverage import NEGATIVES, table_from_scores
from chestxray.explain.localize import (
    box_mask,
    boxes_for,
    is_empty_map,
    localization_scores,
    read_boxes,
    rows_to_boxes,
)
from chestxray.explain.overlay import Caption, render_overlay, save_png
from chestxray.explain.targets import explain_target  # noqa: F401 - part of this module's interface
from chestxray.files import write_csv, write_text
from chestxray.inference.engines import bundle_scorer
from chestxray.inference.predict import (
    as_bundle,
    normalize_for_model,
    predict_split,
    resolve_device,
    score_columns,
)
from chestxray.inference.scoring import load_pixels
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
    caption: Caption | None = None
    for_map_empty: bool = False  # the evidence-for map had no signal (explain.coverage counts these per outcome)
    shown: str = "evidence for"  # the map drawn: 'evidence for' the finding, or 'evidence against' it


OUTCOMES = ("TP", "FP", "FN", "TN")
SETTINGS = "settings.json"


def prepare_input(path: Path, card: dict) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
    """Load an image file as the bundle's model sees it: (gray uint8 (S, S), float input (1, C, S, S), file size (w, h))."""
    gray = load_pixels(path, card)  # the one scoring path's decode + resize (as prepare and predict)
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


def explain_folder(root: str | Path, split: str | None, method: str, label: str | None = None, boxes: bool = False) -> Path:
    """The folder of one explain run under root: <split or 'files'>-<method>[-<label>][-boxes]."""
    parts = [split or "files", method, *([label] if label else []), *(["boxes"] if boxes else [])]
    return Path(root) / "-".join(p.replace("/", "_").replace(" ", "_") for p in parts)


def explain_images(
    bundle: Bundle | str | Path,
    images: Sequence[str | Path | tuple[str | Path, str]],
    method: str = "gradcam",
    label: str | None = None,
    out_dir: str | Path = "explain",
    boxes: pd.DataFrame | str | Path | None = None,
    n_steps: int = 16,
    top_percent: float = 20.0,
    truth: pd.DataFrame | None = None,
    split: str = "",
    settings: Mapping[str, object] | None = None,
    negatives: str = "auto",
) -> list[ExplainResult]:
    """Explain each image (label: given, else the image's own (path, label) pair, else its boxed findings, else its
    top-scoring label); write overlays, scores.csv, coverage.csv and settings.json into out_dir (its old overlays are
    removed).

    truth: 0/1 label columns indexed by image file name (from the catalog) for TP/FP/FN/TN captions; split: shown in
    captions; settings: extra fields for settings.json (e.g. the selection). negatives: the map drawn for a finding the
    model decides negative: 'auto' the evidence against it when the evidence-for map is empty, 'against' always,
    'for' never (explain.coverage). With boxes the evidence-for map is always drawn (it is the one scored).
    """
    if method not in METHODS:
        raise ConfigError(f"explain method {method!r} is not one of {list(METHODS)}{closest(method, METHODS)}")
    if negatives not in NEGATIVES:
        raise ConfigError(f"--negatives {negatives!r} is not one of {list(NEGATIVES)}")
    model = as_bundle(bundle)
    labels = list(model.card["labels"])
    if label is not None and label not in labels:
        raise ConfigError(f"label {label!r} is not one of the model's labels {labels}{closest(label, labels)}")
    table = read_boxes(boxes) if isinstance(boxes, (str, Path)) else boxes
    thresholds = model.card.get("thresholds") or {}
    multiclass = is_multiclass(model.card.get("task"))
    device = resolve_device()
    # captions score as evaluate did (the stored TTA), on the CPU through the cached ONNX graph: no gradient needed
    scorer = bundle_scorer(model, device=str(device))
    net = model.net.to(device).eval()
    size = int(model.card["image_size"])
    mode = model.card.get("resize", "pad")
    base = black_baseline(model.card, size).to(device) if method in ("ig", "occlusion") else None
    out = Path(out_dir)
    _clear(out)
    results: list[ExplainResult] = []
    for item in images:
        path, wanted = (Path(item[0]), item[1]) if isinstance(item, tuple) else (Path(item), None)
        gray, inputs, file_size = prepare_input(path, model.card)
        inputs = inputs.to(device)
        probs = scorer.score(gray[None])[0]
        rows = boxes_for(table, path.name) if table is not None else None
        boxed = [n for n in dict.fromkeys(rows["label"]) if n in labels] if rows is not None else []
        for name in [label or wanted] if (label or wanted) else boxed or [labels[int(probs.argmax())]]:
            target = labels.index(name)
            heatmap = attribute(net, inputs, target, method, base, n_steps)[0]
            found = rows_to_boxes(rows[rows["label"] == name], file_size, size, mode) if rows is not None else []
            scores = localization_scores(heatmap, box_mask(found, heatmap.shape), top_percent) if found else {}
            known = (truth is not None and path.name in truth.index and name in truth.columns
                     and pd.notna(truth.loc[path.name, name]))  # a merged dataset may leave it missing
            caption = Caption(name, float(probs[target]), method, None if multiclass else thresholds.get(name, 0.5),
                              int(truth.loc[path.name, name]) if known else None, path.name, split,
                              predicted=labels[int(probs.argmax())] if multiclass else None)
            empty = is_empty_map(heatmap)
            shown, drawn = heatmap, "evidence for"
            if rows is None and caption.positive is False and (negatives == "against" or (negatives == "auto" and empty)):
                shown, drawn = attribute(net, inputs, target, method, base, n_steps, sign=-1)[0], "evidence against"
                caption = replace(caption, method=f"{method}, evidence against {name}")
            overlay = save_png(render_overlay(gray, shown, caption, found), out / f"{path.stem}_{name}_{method}.png")
            results.append(ExplainResult(path, path.name, name, float(probs[target]), method, shown, overlay, scores,
                                         caption, empty, drawn))
    table = scores_table(results)
    write_csv(out / "scores.csv", table)
    write_csv(out / "coverage.csv", table_from_scores(table))
    record = {"method": method, "split": split or None, "label": label, "n_steps": n_steps if method == "ig" else None,
              "top_percent": top_percent, "boxes": str(boxes) if isinstance(boxes, (str, Path)) else None,
              "bundle": str(model.path), "tta": scorer.tta, "negatives": negatives,
              "thresholds": "none: the argmax class (multiclass)" if multiclass else "from the bundle card" if
              thresholds else "none stored (run evaluate first): decisions at 0.5", "images": len({r.image_id for r in results}), "pairs": len(results),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **(settings or {})}
    write_text(out / SETTINGS, json.dumps(record, indent=2) + "\n")
    log.info("explained %d image(s) with %s into %s", len(results), method, out)
    return results


def _clear(out: Path) -> None:
    """Remove an earlier run's overlays, scores.csv and settings.json from out (nothing else), so runs never mix."""
    if out.is_dir():
        for old in [*out.glob("*.png"), out / "scores.csv", out / SETTINGS]:
            old.unlink(missing_ok=True)


def scores_table(results: Sequence[ExplainResult]) -> pd.DataFrame:
    """One row per result: image, split, label, probability, threshold, truth, outcome, method, overlay and its
    localisation scores (NaN without a box)."""
    rows = []
    for r in results:
        c = r.caption
        rows.append({"image_id": r.image_id, "path": str(r.path), "split": c.split if c else "", "label": r.label,
                     "probability": r.probability, "threshold": c.threshold if c else None,
                     "truth": c.truth if c else None, "outcome": c.outcome if c else "", "method": r.method,
                     "overlay": str(r.overlay), "for_map_empty": int(r.for_map_empty), "map_shown": r.shown,
                     **r.scores})
    columns = ["image_id", "path", "split", "label", "probability", "threshold", "truth", "outcome", "method", "overlay",
               "for_map_empty", "map_shown"]
    return pd.DataFrame(rows, columns=columns if not rows else None)


def summarize_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Mean localisation scores per label and over all boxed rows ('ALL'): n boxed maps, n_empty of them empty,
    n_cut whose box the crop cut away, n_scored left (the rows the means are over).

    Empty maps (no signal) and cut-away boxes score NaN and are left out of the means: they are reported as counts,
    never as hits or misses.
    """
    score_cols = [c for c in table.columns if c in ("pointing_hit", "energy_in_box", "box_fraction") or c.startswith("iou_top")]
    counts = ["n", "n_empty", "n_cut", "n_scored"]
    if "box_fraction" not in score_cols:
        return pd.DataFrame(columns=["label", *counts])
    boxed = table.dropna(subset=["box_fraction"])
    if boxed.empty:
        return pd.DataFrame(columns=["label", *counts, *score_cols])
    empty = boxed["empty_map"].fillna(0).astype(bool) if "empty_map" in boxed else boxed["pointing_hit"].isna()
    cut = boxed["box_cut"].fillna(0).astype(bool) if "box_cut" in boxed else pd.Series(False, index=boxed.index)
    boxed = boxed.assign(_empty=empty.astype(int), _cut=cut.astype(int),
                         _scored=boxed["pointing_hit"].notna().astype(int))
    groups = boxed.groupby("label")
    per_label = groups[score_cols].mean()
    for i, (name, column) in enumerate((("n", None), ("n_empty", "_empty"), ("n_cut", "_cut"),
                                        ("n_scored", "_scored"))):
        per_label.insert(i, name, groups.size() if column is None else groups[column].sum())
    totals = [len(boxed), *(int(boxed[c].sum()) for c in ("_empty", "_cut", "_scored"))]
    overall = pd.DataFrame([[*totals, *boxed[score_cols].mean().tolist()]], columns=[*counts, *score_cols],
                           index=["ALL"])
    return pd.concat([per_label, overall]).rename_axis("label").reset_index()


def _split_rows(bundle: Bundle, split: str) -> pd.DataFrame:
    """Catalog rows of the bundle's prepared dataset in `split` (ConfigError naming the splits when it has none)."""
    from chestxray.data.catalog import load_catalog
    from chestxray.data.shards import MANIFEST, read_manifest

    prepared = bundle.card.get("prepared")
    if not prepared or not (Path(prepared) / MANIFEST).exists():
        raise ConfigError(f"{bundle.path}: card names no prepared dataset ({prepared!r}); pass IMAGES instead of --split")
    table = load_catalog(read_manifest(prepared)["catalog"]).table
    rows = table[table["split"] == split]
    if rows.empty:
        raise ConfigError(f"{prepared}: split {split!r} has no images (splits: {sorted(set(table['split']))})")
    return table.assign(file_name=table["path"].map(lambda p: Path(p).name))


def split_truth(bundle: Bundle, split: str) -> pd.DataFrame:
    """0/1 label columns of the split's images, indexed by file name (for TP/FP/FN/TN captions)."""
    table = _split_rows(bundle, split)
    rows = table[table["split"] == split]
    return rows.set_index("file_name")[[c for c in bundle.labels if c in rows.columns]]


def select_split_targets(bundle: Bundle, split: str = "test", n: int = 8, boxes: pd.DataFrame | None = None,
                         scores: pd.DataFrame | None = None, outcomes: Sequence[str] = ("TP", "FP", "FN"),
                         ) -> list[tuple[Path, str]]:
    """(image, label) pairs of the bundle's prepared split to explain.

    With boxes: the first n images that have an expert box (their boxed findings; ConfigError naming the splits that
    have boxed images when this one has none). Otherwise a balanced selection by outcome at the bundle's thresholds
    (0.5 when none are stored; the argmax class for a multiclass bundle): n split evenly over `outcomes`, taken in turn — the most confident true positives,
    the most confident false positives, the most missed false negatives, the most confident true negatives.
    scores: predictions of that split already made (predict_split's columns, e.g. RUN/eval/predictions.csv);
    without them the split is scored through the one scoring path with the stored TTA.
    """
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown or not outcomes:
        raise ConfigError(f"outcomes {list(outcomes)} must be some of {list(OUTCOMES)}")
    table = _split_rows(bundle, split)
    rows = table[table["split"] == split]
    if boxes is not None:
        names = set(boxes["image_id"])
        boxed = table[table["file_name"].isin(names)]
        picked = rows[rows["file_name"].isin(names)].head(n)
        if picked.empty:
            per_split = boxed["split"].value_counts()
            where = ", ".join(f"{k} {v}" for k, v in per_split.items()) or "none of any split"
            raise ConfigError(f"no image of split {split!r} has an expert box; boxed images per split: {where}"
                              + (f"; try --split {per_split.index[0]}" if len(per_split) else
                                 "; the boxes file names none of this dataset's images"))
        return [(Path(p), lab) for p in picked["path"] for lab in
                dict.fromkeys(boxes.loc[boxes["image_id"] == Path(p).name, "label"]) if lab in bundle.labels]
    labels = list(bundle.labels)
    if scores is None:
        scores = predict_split(bundle, bundle.card["prepared"], split)
    thresholds = bundle.thresholds or {}
    values = scores[labels].to_numpy(dtype=float)
    given = ~np.isnan(values)  # a merged dataset: pairs whose source does not annotate the label are no outcome
    truth = values == 1
    prob = scores[score_columns(labels)].to_numpy(dtype=float)
    if is_multiclass(bundle.card.get("task")):  # exclusive classes: the argmax decides (it may be under 0.5)
        decided = np.arange(len(labels)) == prob.argmax(axis=1)[:, None]
    else:
        decided = prob >= np.array([thresholds.get(name, 0.5) for name in labels])
    # per outcome: candidate (image, label) pairs, most telling first (confidence for P, how missed for FN)
    key = {"TP": truth & decided, "FP": ~truth & decided & given, "FN": truth & ~decided,
           "TN": ~truth & ~decided & given}
    order = {"TP": -prob, "FP": -prob, "FN": prob, "TN": prob}
    queues = {}
    for outcome in outcomes:
        i, j = np.nonzero(key[outcome])
        rank = np.argsort(order[outcome][i, j], kind="stable")
        queues[outcome] = [(str(scores["image_id"].iloc[a]), labels[b]) for a, b in zip(i[rank], j[rank])]
    paths = rows.set_index("image_id")["path"]
    picked: list[tuple[Path, str]] = []
    seen: set[tuple[str, str]] = set()
    while len(picked) < n and any(queues.values()):
        for outcome in outcomes:
            while queues[outcome]:
                image_id, lab = queues[outcome].pop(0)
                if (image_id, lab) not in seen and image_id in paths.index:
                    seen.add((image_id, lab))
                    picked.append((Path(paths[image_id]), lab))
                    break
            if len(picked) == n:
                break
    return picked


def explain_split(bundle: Bundle, split: str, n: int = 8, method: str = "gradcam", out_root: str | Path = "explain",
                  boxes: pd.DataFrame | None = None, outcomes: Sequence[str] = ("TP", "FP", "FN"),
                  scores: pd.DataFrame | None = None, label: str | None = None, n_steps: int = 16,
                  out_dir: str | Path | None = None, negatives: str = "auto") -> tuple[list[ExplainResult], Path]:
    """Explain n (image, label) pairs of a prepared split (select_split_targets) into its own folder under out_root
    (explain_folder), or into out_dir when given; returns the results and the folder. negatives: see explain_images."""
    targets = select_split_targets(bundle, split, n, boxes, scores, outcomes)
    if label is not None:
        targets = [(p, label) for p in dict.fromkeys(p for p, _ in targets)]
    folder = Path(out_dir) if out_dir is not None else explain_folder(out_root, split, method, label, boxes is not None)
    selection = "images with expert boxes" if boxes is not None else "balanced by outcome: " + ", ".join(outcomes)
    results = explain_images(bundle, targets, method, label, folder, boxes, n_steps, truth=split_truth(bundle, split),
                             split=split, settings={"selection": selection, "n": n}, negatives=negatives)
    return results, folder
