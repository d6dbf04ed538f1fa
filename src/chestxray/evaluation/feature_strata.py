"""AUROC within strata of a nuisance feature: pure functions, arrays in, numbers out.

The plain AUROC compares every positive with every negative. When a feature of how the image was taken (its
aspect ratio, its view, its scanner) differs between the classes, a model can score well by reading that feature.
The stratified AUROC compares a positive only with negatives of the same stratum of the feature, and weighs each
stratum by its number of such pairs (n_pos * n_neg), so the feature itself cannot separate anything: a score that is
the feature alone gets about 0.5 (exactly 0.5 when the feature is constant within strata), while a score that reads
the disease keeps its AUROC. Numeric features are cut into quantile strata; categories are strata as they are.
Intervals come from the same patient bootstrap as every other interval (chestxray.evaluation.bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from chestxray.evaluation.bootstrap import SortedTask, bootstrap_patient_counts, patient_codes

MIN_PER_STRATUM = 10  # quantile strata hold at least this many images (fewer strata for small splits)


def quantile_strata(values: Any, n_strata: int = 20, min_size: int = MIN_PER_STRATUM) -> np.ndarray:
    """Stratum id (0..S-1) per image: quantile bins of a numeric feature (at most n_strata, at least min_size images
    each where possible), or the categories of a non-numeric one; -1 where the value is missing."""
    series = pd.Series(values)
    numeric = pd.to_numeric(series, errors="coerce")
    out = np.full(len(series), -1, dtype=np.int64)
    if numeric.notna().sum() == series.notna().sum() and numeric.notna().any():
        known = numeric.notna().to_numpy()
        bins = max(1, min(n_strata, int(known.sum()) // max(min_size, 1)))
        ranks = numeric[known].rank(method="average").to_numpy()
        codes = np.minimum(((ranks - 1) / max(known.sum(), 1) * bins).astype(np.int64), bins - 1)
        out[known] = codes
        return np.unique(out, return_inverse=True)[1] - (1 if (out < 0).any() else 0)
    codes, _ = pd.factorize(series.astype("string"), sort=True)
    return codes.astype(np.int64)


def _pairs(y: np.ndarray, strata: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, S) weighted positive x negative pair counts per stratum for rows of image weights (B, N)."""
    n_strata = int(strata.max()) + 1
    pos = np.zeros((weights.shape[0], n_strata))
    neg = np.zeros_like(pos)
    for s in range(n_strata):
        in_s = strata == s
        pos[:, s] = weights[:, in_s & y].sum(1)
        neg[:, s] = weights[:, in_s & ~y].sum(1)
    return pos * neg


def stratified_auroc_replicates(y: np.ndarray, score: np.ndarray, strata: np.ndarray, codes: np.ndarray,
                                counts: np.ndarray) -> np.ndarray:
    """Stratified AUROC (B,) under patient counts (B, P): within-stratum AUROCs weighted by their pair counts;
    images with stratum -1 are left out; NaN where no stratum has both classes."""
    y = np.asarray(y).astype(bool)
    keep = strata >= 0
    y, score, strata, codes = y[keep], np.asarray(score, float)[keep], strata[keep], codes[keep]
    weights = counts[:, codes].astype(np.float64)
    pairs = _pairs(y, strata, weights)
    total = np.zeros(len(counts))
    area = np.zeros(len(counts))
    for s in range(int(strata.max()) + 1 if strata.size else 0):
        in_s = strata == s
        if not (y[in_s].any() and (~y[in_s]).any()):
            continue
        used, local = np.unique(codes[in_s], return_inverse=True)
        auc = SortedTask(y[in_s], score[in_s], local).replicates(counts[:, used])[0]
        ok = np.isfinite(auc)
        area[ok] += auc[ok] * pairs[ok, s]
        total[ok] += pairs[ok, s]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, area / total, np.nan)


@dataclass(frozen=True)
class StratifiedAUROC:
    """Plain and stratified AUROC of one score with their patient-bootstrap intervals, and the strata used."""

    plain: float
    plain_low: float
    plain_high: float
    stratified: float
    stratified_low: float
    stratified_high: float
    strata: int


def stratified_auroc(y: Any, score: Any, feature: Any, patient_ids: Sequence[Any], n_strata: int = 20,
                     n_boot: int = 500, ci: float = 0.95, seed: int = 0) -> StratifiedAUROC:
    """Plain AUROC of `score` and its AUROC within strata of `feature` (quantile_strata), each with a
    percentile interval from `n_boot` patient-bootstrap replicates (the same replicates for both)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    strata = quantile_strata(feature, n_strata)
    codes, n_pat = patient_codes(patient_ids)
    ones = np.ones((1, n_pat), dtype=np.int32)
    counts = bootstrap_patient_counts(n_pat, n_boot, np.random.default_rng(seed))
    plain_task = SortedTask(y, score, codes)
    plain, plain_b = plain_task.replicates(ones)[0][0], plain_task.replicates(counts)[0]
    strat = stratified_auroc_replicates(y, score, strata, codes, ones)[0]
    strat_b = stratified_auroc_replicates(y, score, strata, codes, counts)
    q = [50 * (1 - ci), 50 * (1 + ci)]

    def interval(reps: np.ndarray) -> tuple[float, float]:
        ok = reps[np.isfinite(reps)]
        return (float(np.percentile(ok, q[0])), float(np.percentile(ok, q[1]))) if ok.size else (np.nan, np.nan)

    return StratifiedAUROC(float(plain), *interval(plain_b), float(strat), *interval(strat_b),
                           int(strata.max()) + 1 if strata.size else 0)
