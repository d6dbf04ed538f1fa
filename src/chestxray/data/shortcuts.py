"""Shortcut check: how well simple acquisition features alone predict each label, before any model is trained.

A classifier can score well by learning how an image was taken (its size, shape, file size, exposure, bit depth,
view) instead of what it shows. For each label we report the AUROC of each feature alone (0.5 = no signal; values
far from 0.5 in either direction are signal) and of all of them together (logistic regression, 5-fold
cross-validation grouped by patient). A result is flagged when it is at least `margin` from 0.5 and beyond three
standard deviations of the AUROC under no signal (sqrt((n_pos + n_neg + 1) / (12 n_pos n_neg)), the Mann-Whitney
null), so that a rare label's noise is not called a shortcut.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog

log = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = ("width", "height", "aspect_ratio", "file_size", "mean_intensity", "std_intensity",
                             "bit_depth")
COMBINED = "all features (cross-validated)"
_WORDS = {"width": "width", "height": "height", "aspect_ratio": "aspect ratio (width/height)", "file_size": "file size",
          "mean_intensity": "mean brightness", "std_intensity": "contrast (intensity std)", "bit_depth": "bit depth",
          "view": "view", COMBINED: "all these together"}


def image_features(path: str | Path) -> dict[str, float]:
    """Acquisition features of one file: stored width, height, aspect ratio, bytes, mean/std of its 8-bit gray, bits."""
    from chestxray.data.imaging import load_gray

    path = Path(path)
    width, height, bits = _header(path)
    gray = load_gray(path, target=128)  # JPEG draft decode keeps this cheap; mean/std barely depend on scale
    return {"width": float(width), "height": float(height), "aspect_ratio": width / height,
            "file_size": float(path.stat().st_size), "mean_intensity": float(gray.mean()),
            "std_intensity": float(gray.std()), "bit_depth": float(bits)}


def _header(path: Path) -> tuple[int, int, int]:
    """(width, height, bits per sample) from the file header: Pillow's size and mode, or DICOM Columns/Rows/BitsStored."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            bits = 16 if im.mode.startswith("I;16") or im.mode == "I" else 32 if im.mode == "F" else 1 if im.mode == "1" else 8
            return im.size[0], im.size[1], bits
    except (OSError, ValueError):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows), int(getattr(ds, "BitsStored", 16))


def acquisition_features(catalog: Catalog, max_images: int = 2000, seed: int = 0) -> pd.DataFrame:
    """FEATURES (+ view when the catalog has it) for up to max_images seeded-random catalog rows; unreadable rows dropped."""
    table = catalog.table[catalog.table["path"].fillna("").astype(str) != ""]
    if len(table) > max_images:
        table = table.sample(n=max_images, random_state=seed).sort_index()
    rows, kept = [], []
    for index, path in table["path"].astype(str).items():
        try:
            rows.append(image_features(path))
            kept.append(index)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is left out of the check, never fatal
            log.debug("shortcut check: skipping %s (%s)", path, exc)
    features = pd.DataFrame(rows, index=kept, columns=list(FEATURES))
    if "view" in table and table["view"].notna().any():
        features["view"] = table.loc[kept, "view"].fillna("unknown").astype(str)
    return features


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC of score for 0/1 y by the Mann-Whitney rank sum (ties count half); both classes must be present."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def null_sd(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUROC of a feature with no signal (Mann-Whitney null, no ties)."""
    return float(np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg)))


def shortcut_check(catalog: Catalog, features: pd.DataFrame | None = None, margin: float = 0.1, seed: int = 0,
                   max_images: int = 2000) -> pd.DataFrame:
    """One row per (label, feature): AUROC of the feature alone (and of all together), n_pos, n_neg, null_sd, flagged."""
    if features is None:
        features = acquisition_features(catalog, max_images=max_images, seed=seed)
    out = []
    numeric = [c for c in FEATURES if c in features]
    for label in catalog.labels:
        y = catalog.table.loc[features.index, label].to_numpy(dtype=int)
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        if n_pos == 0 or n_neg == 0:
            continue
        scores = {name: features[name].to_numpy(dtype=float) for name in numeric}
        if "view" in features:  # a category's positive rate as its score (in-sample; views are few)
            scores["view"] = features["view"].map(pd.Series(y, index=features.index).groupby(features["view"]).mean())
        for name, score in scores.items():
            out.append((label, name, auroc(y, np.asarray(score, dtype=float))))
        if min(n_pos, n_neg) >= 5:
            out.append((label, COMBINED, _cross_validated_auroc(features, y, catalog, seed)))
    table = pd.DataFrame(out, columns=["label", "feature", "auroc"])
    counts = {lab: (int(catalog.table.loc[features.index, lab].sum()), len(features)) for lab in set(table["label"])}
    table["n_pos"] = table["label"].map(lambda lab: counts[lab][0])
    table["n_neg"] = table["label"].map(lambda lab: counts[lab][1] - counts[lab][0])
    table["null_sd"] = [null_sd(p, n) for p, n in zip(table["n_pos"], table["n_neg"])]
    distance = (table["auroc"] - 0.5).abs()
    table["flagged"] = (distance >= margin) & (distance > 3 * table["null_sd"])
    return table


def _cross_validated_auroc(features: pd.DataFrame, y: np.ndarray, catalog: Catalog, seed: int) -> float:
    """AUROC of a logistic regression on all features, out-of-fold over 5 patient-grouped, stratified folds."""
    from sklearn import config_context
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = pd.get_dummies(features, columns=["view"] if "view" in features else [], dtype=float).fillna(0.0)
    groups = catalog.table.loc[features.index, "patient_id"].astype(str).to_numpy()
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear"))
    with config_context(skip_parameter_validation=True, assume_finite=True):  # validation dominates on small sets
        prob = cross_val_predict(model, x.to_numpy(), y, groups=groups, cv=folds, method="predict_proba")[:, 1]
    return auroc(y, prob)


def shortcut_warnings(table: pd.DataFrame) -> list[str]:
    """Plain-words warning per label whose acquisition features alone predict it (flagged rows), strongest first."""
    lines = []
    flagged = table[table["flagged"]]
    for label, rows in flagged.groupby("label", sort=False):
        rows = rows.assign(strength=(rows["auroc"] - 0.5).abs()).sort_values("strength", ascending=False)
        parts = []
        for r in rows.itertuples():
            direction = "" if r.feature in ("view", COMBINED) else (
                f", higher in {label} images" if r.auroc > 0.5 else f", lower in {label} images")
            parts.append(f"{_WORDS.get(r.feature, r.feature)} (AUROC {r.auroc:.2f}{direction})")
        lines.append(f"shortcut risk for {label}: how the images were acquired predicts it without looking at the "
                     f"anatomy: {'; '.join(parts)}. A model can learn this instead of the disease, and no "
                     "--resize mode removes a shape shortcut (pad's bars show the shape; crop and stretch still do: "
                     "explore --geometry measures it); measure what a trained model does with it (chestxray audit "
                     "RUN) and test on images from another source.")
    return lines
