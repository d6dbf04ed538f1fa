"""How the square model input carries the image's shape: the data-side half of the shortcut audit.

Chest X-ray collections mix image shapes, and the shape can go with the label (Kaggle's pediatric pneumonia images
are wider than its normal ones: aspect ratio alone has AUROC about 0.88 there). Fitting an image into the model's
square leaves a trace of its shape in every geometry (chestxray.data.imaging.fit_square):
- pad: black bars whose size is the aspect ratio itself;
- crop: a wider image loses more of its sides and is scaled by its height, so the anatomy's size and what is cut
  still tell the shape, and the widest images lose lung;
- stretch: the whole image, squeezed sideways by its aspect ratio.
`geometry_check` measures, within each class (so the label cannot help), how well a linear probe on the rendered
input pixels tells "wider than the class median", per geometry, and how much of the image crop throws away.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog
from chestxray.data.imaging import RESIZE_MODES, fit_square, load_gray_reduced

log = logging.getLogger(__name__)

MIN_PROBE_PATIENTS = 5  # a probe class needs this many patients (else the probe is not run)


def probe_auroc(x: np.ndarray, target: pd.Series, groups: Sequence[str], seed: int) -> tuple[float, int, str]:
    """Out-of-fold AUROC (macro one-vs-rest for more than two classes) of a standardised L2 logistic regression
    predicting `target` (NaN = unknown) from rows of `x`, folds grouped by patient (StratifiedGroupKFold, at most 5);
    (NaN, classes, reason) when fewer than two classes have MIN_PROBE_PATIENTS patients."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    groups = np.asarray(list(groups))
    target = pd.Series(target).reset_index(drop=True)
    known = target.notna().to_numpy()
    per_class = pd.Series(groups[known]).groupby(target[known].to_numpy()).nunique()
    classes = per_class[per_class >= MIN_PROBE_PATIENTS].index.tolist()
    if len(classes) < 2:
        return float("nan"), len(classes), f"fewer than two classes with {MIN_PROBE_PATIENTS} patients each"
    keep = known & target.isin(classes).to_numpy()
    y = pd.factorize(target[keep], sort=True)[0]
    folds = StratifiedGroupKFold(n_splits=min(5, int(per_class[classes].min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, solver="liblinear"))  # fast at these sizes
    prob = cross_val_predict(model, x[keep], y, groups=groups[keep], cv=folds, method="predict_proba")
    score = roc_auc_score(y, prob[:, 1]) if len(classes) == 2 else roc_auc_score(y, prob, multi_class="ovr")
    return float(score), len(classes), ""


def discarded_by_crop(height: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Share of the long side that 'crop' throws away: 1 - short / long (0 for a square image)."""
    h, w = np.asarray(height, float), np.asarray(width, float)
    return 1.0 - np.minimum(h, w) / np.maximum(h, w)


def class_groups(catalog: Catalog, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Masks of the classes to look within: 'normal' (no label) and each label's positives for a binary or
    multi-class catalog; 'normal' and 'any finding' for a multi-label one."""
    y = table[list(catalog.labels)].to_numpy().astype(bool)
    groups = {"normal": ~y.any(1)}
    if catalog.task == "multilabel" and len(catalog.labels) > 1:
        groups["any finding"] = y.any(1)
    else:
        groups.update({name: y[:, j] for j, name in enumerate(catalog.labels) if not name.lower() == "normal"})
    return {k: v for k, v in groups.items() if v.any()}


def geometry_check(catalog: Catalog, size: int = 64, modes: Sequence[str] = RESIZE_MODES, max_images: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """Per class and geometry: images, patients, the probe AUROC of 'wider than the class median' from the rendered
    size x size input pixels (0.5 = the input does not show the shape), and what crop discards of the long side
    (median, 90th percentile, max). Up to max_images seeded-random images with a readable file."""
    table = catalog.table[catalog.table["path"].fillna("").astype(str) != ""]
    if len(table) > max_images:
        table = table.sample(n=max_images, random_state=seed).sort_index()
    rendered: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    shapes, kept = [], []
    for index, path in table["path"].astype(str).items():
        try:
            gray, shape = load_gray_reduced(path, target=size)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is left out of the check, never fatal
            log.debug("geometry check: skipping %s (%s)", path, exc)
            continue
        for m in modes:
            rendered[m].append(fit_square(gray, size, m, source_shape=shape).reshape(-1))
        shapes.append(shape)
        kept.append(index)
    table = table.loc[kept]
    hw = np.array(shapes, dtype=float).reshape(-1, 2)
    ratio = pd.Series(hw[:, 1] / np.maximum(hw[:, 0], 1), index=table.index)
    cut = discarded_by_crop(hw[:, 0], hw[:, 1])
    rows = []
    for name, mask in class_groups(catalog, table).items():
        wider = (ratio[mask] > ratio[mask].median()).map({True: "wider", False: "not wider"})
        patients = table.loc[mask, "patient_id"].astype(str).tolist()
        for m in modes:
            x = np.stack(rendered[m])[mask].astype(np.float64) if mask.any() else np.zeros((0, size * size))
            auc, _, reason = (probe_auroc(x, wider, patients, seed) if ratio[mask].nunique() > 1
                              else (float("nan"), 0, "every image has the same shape"))
            rows.append({"class": name, "geometry": m, "images": int(mask.sum()), "patients": len(set(patients)),
                         "wider_auroc": auc, "discarded_median": float(np.median(cut[mask])),
                         "discarded_p90": float(np.percentile(cut[mask], 90)), "discarded_max": float(cut[mask].max()),
                         "note": reason})
    return pd.DataFrame(rows)
