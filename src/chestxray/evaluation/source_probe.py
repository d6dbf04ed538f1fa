"""Can the model tell where an image came from? A linear probe on its penultimate features predicts each source of
a merged dataset (that source against the others), cross-validated out of fold with folds grouped by patient.

An AUROC near 1 means the features separate the sources: any finding whose prevalence differs between sources can
then be predicted through the source instead of the image (the pneumonia shortcut Zech et al. 2018 found across
hospitals). The acquisition-only version of the same question (size, aspect ratio, file size, brightness …, no
model) is `chestxray explore`'s 'source: NAME' rows (chestxray.data.shortcuts); seen together they say whether the
model learnt the source beyond what the files give away.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FOLDS = 5
METHOD = ("logistic regression on the standardised penultimate features, out of fold over 5 folds grouped by "
          "patient and stratified by source")


def source_probe(features: np.ndarray, sources: np.ndarray, patients: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """One row per source: images, patients, the out-of-fold AUROC of 'this source vs the others' from the
    features (N, D), or the reason it cannot be measured (too few patients for the folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sources, patients = np.asarray(sources).astype(str), np.asarray(patients).astype(str)
    x = np.asarray(features, dtype=np.float64)
    rows = []
    for name in sorted(set(sources)):
        y = (sources == name).astype(int)
        pos, neg = len(set(patients[y == 1])), len(set(patients[y == 0]))
        row = {"source": name, "images": int(y.sum()), "patients": pos, "auroc": None, "note": ""}
        if min(pos, neg) < FOLDS:
            row["note"] = f"too few patients for {FOLDS} folds ({pos} in the source, {neg} outside)"
            rows.append(row)
            continue
        folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        prob = cross_val_predict(model, x, y, groups=patients, cv=folds, method="predict_proba")[:, 1]
        row["auroc"] = float(roc_auc_score(y, prob))
        rows.append(row)
    return pd.DataFrame(rows, columns=["source", "images", "patients", "auroc", "note"])
