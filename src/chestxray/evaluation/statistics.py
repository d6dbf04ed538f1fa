"""Tests of a difference between two models scored on the same images: pure functions, arrays in, numbers out.

- Obuchowski's nonparametric test for clustered ROC data (Obuchowski 1997, Biometrics 53:567), the test the
  toolkit uses: the patient is the cluster, so a patient's correlated images count as one unit of evidence. It is
  DeLong's test with the structural components summed per patient; with one image per patient it IS DeLong's test
  (same covariance, same p). `clustered_direct` computes it from the pairwise definition (used by the tests).
  `clustered_macro_test` tests a mean of differences over several findings on the same patients.
- DeLong's test for two correlated AUROCs (DeLong, DeLong & Clarke-Pearson 1988), computed with the fast
  midrank algorithm of Sun & Xu (2014, IEEE SPL 21:1389); `delong_direct` is the O(m n) structural-components
  definition it must equal (used by the tests). DeLong treats images as independent: with several images per
  patient its standard error is too small and equal models are called different far above the nominal rate.
- A paired patient-bootstrap interval of the AUROC difference: both models scored on the same resampled
  patients in every replicate (stratified as in chestxray.evaluation.bootstrap), which respects the clustering
  of a patient's images that DeLong ignores.
- Holm's step-down correction of p-values over several findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from chestxray.errors import DataError
from chestxray.evaluation.bootstrap import (
    SortedTask,
    patient_codes,
    patient_property,
    patient_strata,
    stratified_patient_counts,
)


CLUSTERED_TEST = "Obuchowski clustered AUROC test (patients as clusters)"
CLUSTERED_MACRO_TEST = "Obuchowski clustered test of the macro mean (patients as clusters)"


@dataclass(frozen=True)
class AurocTest:
    """Two AUROCs, their covariance matrix (2x2), the difference a - b, its standard error, z and two-sided p."""

    auc_a: float
    auc_b: float
    cov: np.ndarray
    diff: float
    se: float
    z: float
    p: float


DeLong = AurocTest  # the name this result had when DeLong's was the only test


def _check_pair(y_true: Any, score_a: Any, score_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) bool and scores (2, N); errors name the shapes and a missing class."""
    y = np.asarray(y_true).ravel()
    s = np.vstack([np.asarray(score_a, dtype=np.float64).ravel(), np.asarray(score_b, dtype=np.float64).ravel()])
    if s.shape[1] != y.size:
        raise DataError(f"labels have {y.size} entries but the scores have {np.shape(score_a)} and {np.shape(score_b)}")
    if not np.isin(y, (0, 1)).all():
        raise DataError("labels must be 0/1")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise DataError(f"DeLong needs positives and negatives; got {int(y.sum())} positives among {y.size}")
    return y, s


def _components_fast(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs (k,) and structural components V10 (k, m) and V01 (k, n) from midranks (Sun & Xu 2014, alg. 2)."""
    x, z = s[:, y], s[:, ~y]
    m, n = x.shape[1], z.shape[1]
    tx = rankdata(x, axis=1)
    tz = rankdata(z, axis=1)
    t = rankdata(s, axis=1)
    tx_all, tz_all = t[:, y], t[:, ~y]
    auc = tx_all.sum(1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tx_all - tx) / n
    v01 = 1.0 - (tz_all - tz) / m
    return auc, v10, v01


def _components_direct(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same from the definition: psi(X_i, Y_j) = 1 if X_i > Y_j, 1/2 if equal, 0 otherwise, over all pairs."""
    aucs, v10s, v01s = [], [], []
    for row in s:
        x, z = row[y], row[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(1))
        v01s.append(psi.mean(0))
    return np.array(aucs), np.array(v10s), np.array(v01s)


def _test(auc: np.ndarray, v10: np.ndarray, v01: np.ndarray) -> AurocTest:
    """DeLong's covariance S = S10/m + S01/n and the z test of auc[0] - auc[1]."""
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    return _z_test(auc, s10 / m + s01 / n)


def _z_test(auc: np.ndarray, cov: np.ndarray) -> AurocTest:
    """The two-sided z test of auc[0] - auc[1] given their 2x2 covariance."""
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se <= 1e-15:  # identical rankings: no evidence of a difference (z undefined)
        return AurocTest(float(auc[0]), float(auc[1]), cov, diff, 0.0, 0.0, 1.0 if abs(diff) < 1e-15 else 0.0)
    z = diff / se
    return AurocTest(float(auc[0]), float(auc[1]), cov, diff, se, z, float(2 * norm.sf(abs(z))))


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> DeLong:
    """DeLong's test of AUROC(a) - AUROC(b) on the same images (fast midrank algorithm, O(N log N))."""
    y, s = _check_pair(y_true, score_a, score_b)
    return _test(*_components_fast(y, s))


def delong_direct(y_true: Any, score_a: Any, score_b: Any) -> DeLong:
    """DeLong's test from the pairwise definition (O(m n) memory and time): the reference for `delong_test`."""
    y, s = _check_pair(y_true, score_a, score_b)
    return _test(*_components_direct(y, s))


@dataclass(frozen=True)
class ClusterTerms:
    """One finding's AUROCs for k score sets and each patient's share of their deviation (Obuchowski 1997).

    pos[r, i] = (sum over patient i's positive images of V10 - theta_r) / M and neg[r, i] likewise over its negative
    images with V01 and N, so that AUROC_r - theta_r is approximately sum_i (pos[r, i] + neg[r, i]). The factors are
    Obuchowski's small-sample corrections: I10/(I10-1) for the positive part (I10 patients with a positive image),
    I01/(I01-1) for the negative part, I/(I-1) for the cross terms (I patients).
    """

    auc: np.ndarray  # (k,)
    pos: np.ndarray  # (k, P)
    neg: np.ndarray  # (k, P)
    f_pos: float
    f_neg: float
    f_all: float

    def cov(self) -> np.ndarray:
        """Obuchowski's (k, k) covariance of the AUROCs: S10/M + S01/N + (S11 + S11')/(M N), in these terms."""
        cross = self.pos @ self.neg.T
        return (self.f_pos * self.pos @ self.pos.T + self.f_neg * self.neg @ self.neg.T
                + self.f_all * (cross + cross.T))


def _factor(units: int) -> float:
    """u/(u-1), the small-sample factor of a variance estimated from u patients' terms."""
    if units < 2:
        raise DataError(f"a clustered test needs at least 2 patients on each side; got {units}")
    return units / (units - 1.0)


def cluster_terms(y: np.ndarray, scores: np.ndarray, codes: np.ndarray, n_patients: int,
                  direct: bool = False) -> ClusterTerms:
    """ClusterTerms of one finding: y (N,) bool, scores (k, N), codes (N,) patient index; midranks (fast) or the
    pairwise definition (direct=True, O(M N), for tests)."""
    auc, v10, v01 = (_components_direct if direct else _components_fast)(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    cp, cn = codes[y], codes[~y]
    pos = np.stack([np.bincount(cp, weights=r - a, minlength=n_patients) for r, a in zip(v10, auc)]) / m
    neg = np.stack([np.bincount(cn, weights=r - a, minlength=n_patients) for r, a in zip(v01, auc)]) / n
    present = np.bincount(codes, minlength=n_patients) > 0
    return ClusterTerms(auc, pos, neg, _factor(np.unique(cp).size), _factor(np.unique(cn).size),
                        _factor(int(present.sum())))


def _codes(patient_ids: Sequence[Any], n: int) -> tuple[np.ndarray, int]:
    """Patient codes for n images (a DataError when the count differs)."""
    codes, n_pat = patient_codes(patient_ids)
    if len(codes) != n:
        raise DataError(f"{len(codes)} patient ids for {n} images; give one per image")
    return codes, n_pat


def clustered_test(y_true: Any, score_a: Any, score_b: Any, patient_ids: Sequence[Any]) -> AurocTest:
    """Obuchowski's clustered test of AUROC(a) - AUROC(b) on the same images, patients as clusters (O(N log N))."""
    y, s = _check_pair(y_true, score_a, score_b)
    codes, n_pat = _codes(patient_ids, y.size)
    terms = cluster_terms(y, s, codes, n_pat)
    return _z_test(terms.auc, terms.cov())


def clustered_direct(y_true: Any, score_a: Any, score_b: Any, patient_ids: Sequence[Any]) -> AurocTest:
    """The same test from the pairwise definition of the structural components: the reference for the tests."""
    y, s = _check_pair(y_true, score_a, score_b)
    codes, n_pat = _codes(patient_ids, y.size)
    terms = cluster_terms(y, s, codes, n_pat, direct=True)
    return _z_test(terms.auc, terms.cov())


@dataclass(frozen=True)
class MacroTest:
    """The mean over findings of AUROC(a) - AUROC(b), its standard error, z and two-sided p."""

    diff: float
    se: float
    z: float
    p: float
    findings: int


def clustered_macro_test(y_true: Any, score_a: Any, score_b: Any, patient_ids: Sequence[Any],
                         columns: Sequence[int]) -> MacroTest:
    """Test of the unweighted mean over `columns` of (N, L) labels of AUROC(a) - AUROC(b), patients as clusters.

    Each patient's share d_i = sum over findings of (pos + neg) terms of a minus those of b; the variance of the
    sum is Obuchowski's within each finding (its own factors) and f_all * sum_i d_li d_l'i between findings l != l'
    (the same cross-products over patients). With one finding it is `clustered_test`.
    """
    y = np.asarray(y_true)
    y = y[:, None] if y.ndim == 1 else y
    a = np.asarray(score_a, dtype=np.float64).reshape(y.shape)
    b = np.asarray(score_b, dtype=np.float64).reshape(y.shape)
    codes, n_pat = _codes(patient_ids, len(y))
    if not columns:
        raise DataError("a macro test needs at least one finding")
    diffs, total, var = [], np.zeros(n_pat), 0.0
    for j in columns:
        yj, sj = _check_pair(y[:, j], a[:, j], b[:, j])
        t = cluster_terms(yj, sj, codes, n_pat)
        pos, neg = t.pos[0] - t.pos[1], t.neg[0] - t.neg[1]
        diffs.append(float(t.auc[0] - t.auc[1]))
        total += pos + neg
        var += (t.f_pos - t.f_all) * pos @ pos + (t.f_neg - t.f_all) * neg @ neg
        f_all = t.f_all
    var = (var + f_all * total @ total) / len(columns) ** 2
    diff, se = float(np.mean(diffs)), float(np.sqrt(max(var, 0.0)))
    if se <= 1e-15:
        return MacroTest(diff, 0.0, 0.0, 1.0 if abs(diff) < 1e-15 else 0.0, len(columns))
    z = diff / se
    return MacroTest(diff, se, z, float(2 * norm.sf(abs(z))), len(columns))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), None entries left out of the family and kept None."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    ps = np.array([p_values[i] for i in idx], dtype=np.float64)
    order = np.argsort(ps, kind="stable")
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[k]))
        out[idx[k]] = running
    return out


@dataclass(frozen=True)
class PairedBootstrap:
    """Percentile interval of a paired AUROC difference (a - b) per task and of their macro mean."""

    diffs: np.ndarray  # (n_boot, tasks) replicate differences; NaN where undefined
    low: np.ndarray
    high: np.ndarray
    macro_low: float | None
    macro_high: float | None
    replicates: int
    ci: float = 0.95

    def mean_interval(self, columns: Sequence[int]) -> tuple[float | None, float | None]:
        """Percentile interval of the mean difference over `columns` (the same columns in every replicate;
        replicates where one is undefined are left out); (None, None) without columns or usable replicates."""
        if not len(columns):
            return None, None
        mean = self.diffs[:, list(columns)].mean(1)
        mean = mean[np.isfinite(mean)]
        if not mean.size:
            return None, None
        low, high = np.percentile(mean, [50 * (1 - self.ci), 50 * (1 + self.ci)])
        return float(low), float(high)


def paired_bootstrap(
    y_true: Any, score_a: Any, score_b: Any, patient_ids: Sequence[Any], n_boot: int = 1000, ci: float = 0.95,
    seed: int = 0,
) -> PairedBootstrap:
    """Paired patient bootstrap of AUROC(a) - AUROC(b) for each column of (N, L) labels, and of the macro over
    the columns defined on the data (the same columns in every replicate). Resampling is stratified so each
    defined column keeps a positive and a negative patient."""
    y = np.asarray(y_true)
    y = y[:, None] if y.ndim == 1 else y
    a = np.asarray(score_a, dtype=np.float64).reshape(y.shape)
    b = np.asarray(score_b, dtype=np.float64).reshape(y.shape)
    codes, n_pat = patient_codes(patient_ids)
    if len(codes) != len(y):
        raise DataError(f"{len(codes)} patient ids for {len(y)} images; give one per image")
    defined = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    props = [patient_property(y[:, j] == v, codes, n_pat) for j in defined for v in (0, 1)]
    strata = patient_strata(np.stack(props, 1)) if props else np.zeros(n_pat, dtype=np.int64)
    counts = stratified_patient_counts(strata, n_boot, np.random.default_rng(seed))
    diffs = np.full((n_boot, y.shape[1]), np.nan)
    for j in defined:
        diffs[:, j] = SortedTask(y[:, j], a[:, j], codes).replicates(counts)[0] - \
            SortedTask(y[:, j], b[:, j], codes).replicates(counts)[0]
    q = [50 * (1 - ci), 50 * (1 + ci)]
    with np.errstate(all="ignore"):
        low, high = (np.array([np.nanpercentile(d, q[i]) if np.isfinite(d).any() else np.nan for d in diffs.T])
                     for i in (0, 1))
    macro = diffs[:, defined].mean(1) if defined else np.full(n_boot, np.nan)
    macro = macro[np.isfinite(macro)]
    mlo, mhi = (float(v) for v in np.percentile(macro, q)) if macro.size else (None, None)
    return PairedBootstrap(diffs, low, high, mlo, mhi, int(macro.size), ci)
