"""Shortcut check: how well simple acquisition features alone predict each label, before any model is trained.

A classifier can score well by learning how an image was taken (its size, shape, file size, exposure, bit depth,
view) instead of what it shows. For each label we report the AUROC of each feature alone (0.5 = no signal; a single
feature far from 0.5 in either direction is signal: higher or lower in the label's images) and of all of them
together (logistic regression, out-of-fold over 5 folds grouped by patient, so no patient is in the fold it is
scored from).

The unit is the patient. A patient's images share most acquisition features (the same scanner, often the same
size), so the chance band of an AUROC is that of a score constant within each patient: its null distribution comes
from shuffling the patients' scores among patients (`PERMUTATIONS` Monte Carlo draws; the same as permuting whole
patients, with their images and labels, at the patient level). For a feature that varies within a patient this band
is wider than its own null, so the check errs towards not flagging. A result is flagged when it is at least
`margin` from 0.5 and beyond three standard deviations of that null; the cross-validated model only when ABOVE
chance: a model scored out of fold that lands below 0.5 has learnt nothing that transfers, it does not "predict"
the label.
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


PERMUTATIONS = 2000  # Monte Carlo draws of the patient-level null


def null_sd(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUROC of a feature with no signal when images are independent (Mann-Whitney null,
    no ties); with several images per patient the patient-level null (`patient_null_sd`) is the one to use."""
    return float(np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg)))


def patient_null_sd(y: np.ndarray, patients: np.ndarray, n_perm: int = PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """Per label column of y (N, L) 0/1: the standard deviation of the AUROC of a score that is constant within
    each patient and shuffled among patients (images of one patient tie), over `n_perm` seeded draws."""
    import pandas as pd

    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    codes, uniques = pd.factorize(pd.Series(np.asarray(patients).astype(str)))
    n_pat = len(uniques)
    size = np.bincount(codes, minlength=n_pat).astype(np.float64)
    pos = np.stack([np.bincount(codes, weights=y[:, j], minlength=n_pat) for j in range(y.shape[1])], 1)
    order = np.argsort(np.random.default_rng(seed).random((n_perm, n_pat)), axis=1)  # patients, lowest score first
    start = np.cumsum(size[order], axis=1) - size[order]  # images ranked below each patient's
    ranks = np.empty_like(start)
    np.put_along_axis(ranks, order, start + (size[order] + 1) / 2, axis=1)  # midrank of each patient's images
    n_pos = y.sum(0)
    n_neg = len(y) - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        aurocs = (ranks @ pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return aurocs.std(0)


SOURCE_TARGET = "source: "  # a merged catalog's sources become pseudo-labels 'source: NAME' (one vs the rest)


def targets(catalog: Catalog, index: pd.Index) -> dict[str, pd.Series]:
    """What the check tries to predict, per row of `index`: each label (only where it is annotated: a merged
    catalog leaves it missing for sources that do not annotate it) and, with two or more sources, each source
    against the others (can acquisition alone tell where an image came from?)."""
    table = catalog.table.loc[index]
    out = {label: table[label].dropna().astype(int) for label in catalog.labels}
    if "source" in table and table["source"].nunique() > 1:
        for name in sorted(table["source"].astype(str).unique()):
            out[SOURCE_TARGET + name] = (table["source"].astype(str) == name).astype(int)
    return out


def shortcut_check(catalog: Catalog, features: pd.DataFrame | None = None, margin: float = 0.1, seed: int = 0,
                   max_images: int = 2000) -> pd.DataFrame:
    """One row per (label, feature): AUROC of the feature alone (and of all together), n_pos, n_neg (images),
    patients, null_sd (patient-level null), flagged. A label is scored on the images that annotate it; a merged
    catalog adds one row set per source ('source: NAME', that source against the others)."""
    if features is None:
        features = acquisition_features(catalog, max_images=max_images, seed=seed)
    out = []
    numeric = [c for c in FEATURES if c in features]
    all_patients = catalog.table.loc[features.index, "patient_id"].astype(str)
    for label, target in targets(catalog, features.index).items():
        part = features.loc[target.index]
        y, patients = target.to_numpy(dtype=int), all_patients.loc[target.index].to_numpy()
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        if n_pos == 0 or n_neg == 0:
            continue
        scores = {name: part[name].to_numpy(dtype=float) for name in numeric}
        if "view" in part:  # a category's positive rate as its score (in-sample; views are few)
            scores["view"] = part["view"].map(pd.Series(y, index=part.index).groupby(part["view"]).mean())
        rows = [(label, name, auroc(y, np.asarray(score, dtype=float))) for name, score in scores.items()]
        if min(n_pos, n_neg) >= 5 and len(set(patients)) >= 5 and min(len(set(patients[y == 1])),
                                                                       len(set(patients[y == 0]))) >= 2:
            rows.append((label, COMBINED, _cross_validated_auroc(part, y, catalog, seed)))
        sd = float(patient_null_sd(y[:, None], patients, seed=seed)[0])
        out.extend((*r, n_pos, n_neg, len(set(patients)), sd) for r in rows)
    table = pd.DataFrame(out, columns=["label", "feature", "auroc", "n_pos", "n_neg", "patients", "null_sd"])
    table["null"] = "patient-level: a per-patient score shuffled among patients"
    table["flagged"] = flag(table, margin)
    return table


def flag(table: pd.DataFrame, margin: float = 0.1) -> pd.Series:
    """Which rows are signal: AUROC at least `margin` from 0.5 and beyond 3 null_sd; a single feature in either
    direction, the cross-validated model only above 0.5 (out of fold below chance is not 'predicts')."""
    distance = table["auroc"] - 0.5
    away = distance.where(table["feature"] != COMBINED, distance.clip(lower=0)).abs()
    return (away >= margin) & (away > 3 * table["null_sd"])


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
            name = label[len(SOURCE_TARGET):] if label.startswith(SOURCE_TARGET) else label
            direction = "" if r.feature in ("view", COMBINED) else (
                f", higher in {name} images" if r.auroc > 0.5 else f", lower in {name} images")
            parts.append(f"{_WORDS.get(r.feature, r.feature)} (AUROC {r.auroc:.2f}{direction})")
        if label.startswith(SOURCE_TARGET):
            lines.append(f"{label[len(SOURCE_TARGET):]} images can be told from the other sources' by acquisition "
                         f"alone: {'; '.join(parts)}. Any finding whose prevalence differs between sources can be "
                         "learnt through the source: read the per-source metrics and the cross-dataset matrix.")
            continue
        lines.append(f"shortcut risk for {label}: how the images were acquired predicts it without looking at the "
                     f"anatomy: {'; '.join(parts)}. A model can learn this instead of the disease, and no "
                     "--resize mode removes a shape shortcut (pad's bars show the shape; crop and stretch still do: "
                     "explore --geometry measures it); measure what a trained model does with it (chestxray audit "
                     "RUN) and test on images from another source.")
    return lines
