"""Classification metrics as pure functions: arrays in, numbers out (no I/O, logging or device state).

Conventions: `y_true` holds 0/1 labels and `y_score` probabilities, shaped (N,) for one finding or
(N, L) for L findings. A metric that cannot be computed on a split (a finding with no positives or no
negatives) is None with a reason, never NaN; means are taken over the defined findings only and say
how many. Confidence intervals come from a bootstrap that resamples PATIENTS, not images, so the
images of one patient always enter a replicate together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.metrics import average_precision_score, roc_auc_score

from chestxray.errors import DataError

NORMAL = "normal"
NORMAL_SCORE = "1 - max(p)"  # how the 'normal' (no finding) score is made from per-finding probabilities


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval; value None means n/a and `reason` says why."""

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None
    replicates: int = 0  # bootstrap replicates in which the metric was defined


@dataclass(frozen=True)
class ThresholdCounts:
    """Confusion counts and the rates derived from them at one decision threshold (None: undefined)."""

    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: float | None
    specificity: float | None
    precision: float | None
    f1: float | None
    accuracy: float | None


@dataclass(frozen=True)
class CalibrationBins:
    """Reliability-diagram bins over [0, 1]: per bin the image count, mean predicted probability and positive rate."""

    edges: np.ndarray
    counts: np.ndarray
    mean_prob: np.ndarray  # NaN in empty bins
    frac_pos: np.ndarray  # NaN in empty bins
    ece: float


@dataclass
class FindingMetrics:
    """One row of the summary: a finding, the macro/micro mean over findings, or the 'normal' detection."""

    name: str
    kind: str  # "finding" | "macro" | "micro" | "normal"
    n: int
    positives: int
    auroc: Interval
    auprc: Interval
    threshold: float | None = None
    counts: ThresholdCounts | None = None
    ece: float | None = None
    note: str = ""


@dataclass
class Summary:
    """All metrics of one evaluated split: per-finding rows followed by macro, micro and normal rows."""

    rows: list[FindingMetrics]
    n_images: int
    n_patients: int
    n_boot: int
    ci: float
    seed: int
    normal_score: str = NORMAL_SCORE

    def row(self, name: str) -> FindingMetrics:
        """The row called `name` (a finding, 'macro', 'micro' or 'normal')."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no summary row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_frame(self) -> pd.DataFrame:
        """One row per finding + macro/micro + normal; n/a cells are empty and `note` gives the reason."""
        records = []
        for r in self.rows:
            rec: dict[str, Any] = {"finding": r.name, "kind": r.kind, "n": r.n, "positives": r.positives}
            for key, iv in (("auroc", r.auroc), ("auprc", r.auprc)):
                rec.update({key: iv.value, f"{key}_low": iv.low, f"{key}_high": iv.high})
            rec["threshold"] = r.threshold
            c = r.counts
            for key in ("sensitivity", "specificity", "precision", "f1", "accuracy", "tp", "fp", "fn", "tn"):
                rec[key] = getattr(c, key) if c is not None else None
            rec["ece"] = r.ece
            rec["note"] = r.note
            records.append(rec)
        return pd.DataFrame.from_records(records)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: n/a values are null with a reason, never NaN."""
        return {
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "bootstrap": {"replicates": self.n_boot, "ci": self.ci, "seed": self.seed, "unit": "patient"},
            "normal_score": self.normal_score,
            "rows": [_clean(asdict(r)) for r in self.rows],
        }


def _clean(obj: Any) -> Any:
    """Replace NaN floats by None and numpy scalars by Python numbers, recursively (for JSON)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


def check_arrays(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (y_true uint8 (N, L), y_score float64 (N, L)); errors state the shapes received."""
    t = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim != 2 or t.shape != s.shape:
        raise DataError(
            f"y_true has shape {np.shape(y_true)} and y_score has shape {np.shape(y_score)}; "
            "both must be (N,) or the same (N, L)"
        )
    if t.size and not np.isin(t, (0, 1)).all():
        bad = np.unique(t[~np.isin(t, (0, 1))])[:5]
        raise DataError(f"y_true of shape {t.shape} must hold only 0/1 labels; found {bad.tolist()}")
    if not np.isfinite(s).all():
        rows, cols = np.nonzero(~np.isfinite(s))
        raise DataError(
            f"y_score of shape {s.shape} has {rows.size} non-finite value(s), first at row {rows[0]}, column {cols[0]}"
        )
    return t.astype(np.uint8), s


def undefined_reason(y_true: Any) -> str | None:
    """Why AUROC is undefined for one finding's labels (no positives / no negatives), or None if it is defined."""
    y = np.asarray(y_true).ravel()
    n, pos = int(y.size), int(y.sum())
    if n == 0:
        return "no images"
    if pos == 0:
        return f"no positives among {n} images"
    if pos == n:
        return f"no negatives among {n} images"
    return None


def auroc(y_true: Any, y_score: Any) -> float | None:
    """Area under the ROC curve of one finding (scikit-learn); None when it has no positives or no negatives."""
    t, s = check_arrays(y_true, y_score)
    if t.shape[1] != 1:
        raise DataError(f"auroc takes one finding, shaped (N,); got shape {t.shape}")
    if undefined_reason(t) is not None:
        return None
    return float(roc_auc_score(t[:, 0], s[:, 0]))


def auprc(y_true: Any, y_score: Any) -> float | None:
    """Average precision (area under the PR curve, scikit-learn) of one finding; None when it has no positives."""
    t, s = check_arrays(y_true, y_score)
    if t.shape[1] != 1:
        raise DataError(f"auprc takes one finding, shaped (N,); got shape {t.shape}")
    if t.sum() == 0:
        return None
    return float(average_precision_score(t[:, 0], s[:, 0]))


def _group_matrices(y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_units: int) -> tuple[Any, Any]:
    """Sparse (n_units, G) matrices counting positive and negative images of each unit per distinct score.

    G is the number of distinct scores, ascending. A unit is an image (codes = row index) or a patient;
    multiplying unit weights (B, n_units) by these gives each replicate's positive/negative weight per score.
    """
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    group_sorted = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1
    group = np.empty_like(group_sorted)
    group[order] = group_sorted
    n_groups = int(group_sorted[-1]) + 1 if s.size else 0
    yb = y.astype(bool)
    shape = (n_units, n_groups)
    pos = sparse.csr_matrix((np.ones(int(yb.sum())), (codes[yb], group[yb])), shape=shape)
    neg = sparse.csr_matrix((np.ones(int((~yb).sum())), (codes[~yb], group[~yb])), shape=shape)
    return pos, neg


def _weights_per_group(weights: np.ndarray, mats: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per distinct score (ascending) for each replicate: two (B, G) arrays."""
    w = np.atleast_2d(weights).astype(np.float64)
    return np.asarray((mats[0].T @ w.T).T), np.asarray((mats[1].T @ w.T).T)


def _auroc_from_groups(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC per replicate: P(score_pos > score_neg) + 1/2 P(tie); NaN where a replicate lacks a class."""
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    pos_above = n_pos[:, None] - np.cumsum(pos, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (neg * (pos_above + 0.5 * pos)).sum(1) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _auprc_from_groups(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision per replicate (scikit-learn's step sum); NaN where a replicate has no positives."""
    pos, neg = pos[:, ::-1], neg[:, ::-1]  # thresholds from the highest score down
    tps, fps = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos = tps[:, -1] if tps.shape[1] else np.zeros(len(tps))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        out = (pos * precision).sum(1) / n_pos
    out[n_pos == 0] = np.nan
    return out


def weighted_auroc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one finding under each row of sample weights (B, N) at once; NaN where a row lacks a class.

    With integer weights this equals the AUROC of the data with each image repeated `weight` times
    (ties count one half), which is what a bootstrap replicate is.
    """
    y, s = np.asarray(y_true).ravel(), np.asarray(y_score, dtype=np.float64).ravel()
    mats = _group_matrices(y, s, np.arange(y.size), y.size)
    return _auroc_from_groups(*_weights_per_group(weights, mats))


def weighted_auprc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one finding under each row of sample weights (B, N); NaN where a row has no positives."""
    y, s = np.asarray(y_true).ravel(), np.asarray(y_score, dtype=np.float64).ravel()
    mats = _group_matrices(y, s, np.arange(y.size), y.size)
    return _auprc_from_groups(*_weights_per_group(weights, mats))


def patient_codes(patient_ids: Sequence[Any]) -> tuple[np.ndarray, int]:
    """Integer code per image for its patient (first-seen order) and the number of patients."""
    codes, uniques = pd.factorize(pd.Series(list(patient_ids), dtype=object), sort=False)
    return codes.astype(np.int64), len(uniques)


def bootstrap_patient_counts(n_patients: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each patient is drawn in each replicate (n_patients draws with replacement): int (n_boot, P)."""
    if n_patients == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    flat = (draws + np.arange(n_boot)[:, None] * n_patients).ravel()
    return np.bincount(flat, minlength=n_boot * n_patients).reshape(n_boot, n_patients)


def bootstrap_counts(patient_ids: Sequence[Any], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each image enters each replicate when PATIENTS are drawn with replacement: int (n_boot, N).

    Draws n_patients patient indices per replicate, counts them, and maps the counts onto image rows
    through each image's patient, so all images of a patient share one count.
    """
    codes, n_pat = patient_codes(patient_ids)
    return bootstrap_patient_counts(n_pat, n_boot, rng)[:, codes]


def _percentile_interval(point: float | None, reps: np.ndarray, ci: float, reason: str | None) -> Interval:
    """Percentile interval over the replicates in which the metric was defined."""
    if point is None:
        return Interval(None, reason=reason)
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return Interval(point, reason="no bootstrap replicate defined", replicates=0)
    lo, hi = np.percentile(ok, [50 * (1 - ci), 50 * (1 + ci)])
    return Interval(point, float(lo), float(hi), replicates=int(ok.size))


def _curve_intervals(
    y: np.ndarray, score: np.ndarray, roc_reps: np.ndarray, pr_reps: np.ndarray, ci: float, no_positives: str
) -> tuple[Interval, Interval, str | None]:
    """AUROC and AUPRC of one binary task with bootstrap intervals, and why AUROC is undefined (None if defined)."""
    reason = undefined_reason(y)
    pr_reason = no_positives if int(np.sum(y)) == 0 else None
    return (_percentile_interval(auroc(y, score), roc_reps, ci, reason),
            _percentile_interval(auprc(y, score), pr_reps, ci, pr_reason), reason)


def _pooled_counts(have: list[ThresholdCounts]) -> tuple[int, int, int, int]:
    """tp, fp, fn, tn summed over several findings' confusion counts."""
    return sum(c.tp for c in have), sum(c.fp for c in have), sum(c.fn for c in have), sum(c.tn for c in have)


def threshold_counts(y_true: Any, y_score: Any, threshold: float) -> ThresholdCounts:
    """Confusion counts (score >= threshold is positive) and sensitivity, specificity, precision, F1, accuracy."""
    t, s = check_arrays(y_true, y_score)
    t, pred = t.ravel().astype(bool), s.ravel() >= threshold
    tp = int((t & pred).sum())
    fp = int((~t & pred).sum())
    fn = int((t & ~pred).sum())
    tn = int((~t & ~pred).sum())
    return counts_to_rates(tp, fp, fn, tn)


def counts_to_rates(tp: int, fp: int, fn: int, tn: int) -> ThresholdCounts:
    """Rates from confusion counts; a rate whose denominator is zero is None (undefined), not 0 or NaN."""

    def ratio(a: int, b: int) -> float | None:
        return a / b if b > 0 else None

    sens, prec = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return ThresholdCounts(tp, fp, fn, tn, sens, ratio(tn, tn + fp), prec, f1, ratio(tp + tn, tp + fp + fn + tn))


def confusion_matrix(y_true: Any, y_score: Any, threshold: float) -> np.ndarray:
    """2x2 int matrix [[tn, fp], [fn, tp]] (rows true 0/1, columns predicted 0/1), as scikit-learn lays it out."""
    c = threshold_counts(y_true, y_score, threshold)
    return np.array([[c.tn, c.fp], [c.fn, c.tp]], dtype=np.int64)


def calibration_bins(y_true: Any, y_prob: Any, n_bins: int = 10) -> CalibrationBins:
    """Equal-width reliability bins over [0, 1] and the expected calibration error (count-weighted |gap|)."""
    t, s = check_arrays(y_true, y_prob)
    t, s = t.ravel().astype(np.float64), s.ravel()
    if s.size and (s.min() < 0 or s.max() > 1):
        raise DataError(f"calibration needs probabilities in [0, 1]; y_prob spans [{s.min():.3g}, {s.max():.3g}]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], s, side="left")  # bins (lo, hi], the first [0, hi], as scikit-learn
    counts = np.bincount(idx, minlength=n_bins)
    sum_prob = np.bincount(idx, weights=s, minlength=n_bins)
    sum_pos = np.bincount(idx, weights=t, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(counts > 0, sum_prob / counts, np.nan)
        frac_pos = np.where(counts > 0, sum_pos / counts, np.nan)
    gaps = np.abs(np.nan_to_num(frac_pos - mean_prob))
    ece = float((counts * gaps).sum() / max(int(counts.sum()), 1))
    return CalibrationBins(edges, counts, mean_prob, frac_pos, ece)


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """ECE over equal-width bins: sum over bins of (bin count / N) * |positive rate - mean probability|."""
    return calibration_bins(y_true, y_prob, n_bins).ece


def normal_truth_and_score(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """'Normal' (No Finding) as its own detection task: truth = all labels zero, score = 1 - max probability.

    1 - max(p) is used rather than the product of (1 - p) because findings are not independent and
    because it agrees with the decision rule 'normal when no finding passes its threshold'.
    """
    t, s = check_arrays(y_true, y_score)
    return (t.sum(1) == 0).astype(np.uint8), 1.0 - s.max(1)


def summarize(
    y_true: Any,
    y_score: Any,
    labels: Sequence[str],
    patient_ids: Sequence[Any],
    thresholds: dict[str, float] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    n_bins: int = 10,
    chunk: int = 200,
) -> Summary:
    """Per-finding, macro, micro and (multi-label) normal metrics with patient-bootstrap CIs.

    AUROC/AUPRC get percentile intervals from `n_boot` replicates that resample patients with a
    seeded numpy Generator. Threshold metrics use `thresholds` (label -> probability; score >= t is positive).
    """
    t, s = check_arrays(y_true, y_score)
    labels = list(labels)
    if t.shape[1] != len(labels):
        raise DataError(f"{len(labels)} label names for arrays of shape {t.shape}; they must match")
    if len(patient_ids) != t.shape[0]:
        raise DataError(f"{len(patient_ids)} patient ids for {t.shape[0]} images; give one per image")
    if not 0 < ci < 1:
        raise DataError(f"ci must be in (0, 1); got {ci}")
    n, n_lab = t.shape
    multi = n_lab > 1
    norm_t, norm_s = normal_truth_and_score(t, s)

    # Bootstrap: draw patients, then turn per-patient counts into per-score weights through sparse
    # matrices built once per task (finding, micro pool, normal), replicates processed in chunks.
    codes, n_pat = patient_codes(patient_ids)
    tasks = [(t[:, j], s[:, j], codes) for j in range(n_lab)]
    if multi:
        tasks.append((t.ravel("F"), s.ravel("F"), np.tile(codes, n_lab)))  # micro: every (image, finding) pair
        tasks.append((norm_t, norm_s, codes))
    mats = [_group_matrices(y, sc, c, n_pat) for y, sc, c in tasks]
    roc_reps = np.full((n_boot, len(tasks)), np.nan)
    pr_reps = np.full((n_boot, len(tasks)), np.nan)
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        per_patient = bootstrap_patient_counts(n_pat, stop - start, rng)
        for k, mat in enumerate(mats):
            step = max(1, int(4e6 // max(mat[0].shape[1], 1)))  # keep (replicates, G) blocks near 32 MB
            for a in range(0, stop - start, step):
                pos, neg = _weights_per_group(per_patient[a : a + step], mat)
                roc_reps[start + a : start + a + len(pos), k] = _auroc_from_groups(pos, neg)
                pr_reps[start + a : start + a + len(pos), k] = _auprc_from_groups(pos, neg)

    thresholds = thresholds or {}
    rows: list[FindingMetrics] = []
    for j, name in enumerate(labels):
        roc, pr, reason = _curve_intervals(t[:, j], s[:, j], roc_reps[:, j], pr_reps[:, j], ci,
                                           f"no positives among {n} images")
        thr = thresholds.get(name)
        rows.append(
            FindingMetrics(
                name=name,
                kind="finding",
                n=n,
                positives=int(t[:, j].sum()),
                auroc=roc,
                auprc=pr,
                threshold=thr,
                counts=threshold_counts(t[:, j], s[:, j], thr) if thr is not None else None,
                ece=expected_calibration_error(t[:, j], s[:, j], n_bins) if n else None,
                note=reason or "",
            )
        )
    if multi:
        findings = list(rows)
        rows.append(_macro_row(findings, roc_reps[:, :n_lab], pr_reps[:, :n_lab], ci, n))
        rows.append(_micro_row(t, s, findings, roc_reps[:, n_lab], pr_reps[:, n_lab], ci, n_bins))
        rows.append(
            _normal_row(s, norm_t, norm_s, thresholds, labels, roc_reps[:, n_lab + 1], pr_reps[:, n_lab + 1], ci)
        )
    return Summary(rows, n_images=n, n_patients=n_pat, n_boot=n_boot, ci=ci, seed=seed)


def _macro_row(rows: list[FindingMetrics], roc_reps: np.ndarray, pr_reps: np.ndarray, ci: float, n: int) -> FindingMetrics:
    """Unweighted mean over the findings where each metric is defined; the note says over how many."""
    n_lab = len(rows)

    def mean_interval(vals: list[float | None], reps: np.ndarray, what: str) -> Interval:
        keep = [j for j, v in enumerate(vals) if v is not None]
        if not keep:
            return Interval(None, reason=f"{what} undefined for every finding")
        point = float(np.mean([vals[j] for j in keep]))
        sub = reps[:, keep]
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(sub).any(1)
            rep_means = np.full(len(sub), np.nan)
            rep_means[valid] = np.nanmean(sub[valid], axis=1)
        return _percentile_interval(point, rep_means, ci, None)

    roc = mean_interval([r.auroc.value for r in rows], roc_reps, "AUROC")
    pr = mean_interval([r.auprc.value for r in rows], pr_reps, "AUPRC")
    have = [r.counts for r in rows if r.counts is not None]
    counts = None
    if have:
        def avg(key: str) -> float | None:
            vals = [getattr(c, key) for c in have if getattr(c, key) is not None]
            return float(np.mean(vals)) if vals else None

        counts = ThresholdCounts(
            *_pooled_counts(have), avg("sensitivity"), avg("specificity"), avg("precision"), avg("f1"), avg("accuracy"),
        )
    eces = [r.ece for r in rows if r.ece is not None]
    n_def = sum(r.auroc.value is not None for r in rows)
    return FindingMetrics(
        name="macro",
        kind="macro",
        n=n,
        positives=sum(r.positives for r in rows),
        auroc=roc,
        auprc=pr,
        counts=counts,
        ece=float(np.mean(eces)) if eces else None,
        note=f"mean over {n_def} of {n_lab} findings with AUROC defined",
    )


def _micro_row(
    t: np.ndarray, s: np.ndarray, rows: list[FindingMetrics], roc_reps: np.ndarray, pr_reps: np.ndarray,
    ci: float, n_bins: int,
) -> FindingMetrics:
    """All (image, finding) pairs pooled into one binary problem; counts pooled over thresholded findings."""
    flat_t, flat_s = t.ravel("F"), s.ravel("F")
    roc, pr, _ = _curve_intervals(flat_t, flat_s, roc_reps, pr_reps, ci, "no positives in any finding")
    have = [r.counts for r in rows if r.counts is not None]
    return FindingMetrics(
        name="micro",
        kind="micro",
        n=int(flat_t.size),
        positives=int(flat_t.sum()),
        auroc=roc,
        auprc=pr,
        counts=counts_to_rates(*_pooled_counts(have)) if have else None,
        ece=expected_calibration_error(flat_t, flat_s, n_bins),
        note=f"all {t.shape[1]} findings pooled ({flat_t.size} image-finding pairs)",
    )


def _normal_row(
    s: np.ndarray, norm_t: np.ndarray, norm_s: np.ndarray, thresholds: dict[str, float],
    labels: list[str], roc_reps: np.ndarray, pr_reps: np.ndarray, ci: float,
) -> FindingMetrics:
    """'No Finding' detection: scored by 1 - max(p); predicted normal when no finding passes its threshold."""
    roc, pr, reason = _curve_intervals(norm_t, norm_s, roc_reps, pr_reps, ci, "no normal images")
    counts = None
    if all(name in thresholds for name in labels):
        thr = np.array([thresholds[name] for name in labels])
        pred_normal = ~(s >= thr).any(1)
        truth = norm_t.astype(bool)
        counts = counts_to_rates(
            int((truth & pred_normal).sum()), int((~truth & pred_normal).sum()),
            int((truth & ~pred_normal).sum()), int((~truth & ~pred_normal).sum()),
        )
    return FindingMetrics(
        name=NORMAL,
        kind="normal",
        n=int(norm_t.size),
        positives=int(norm_t.sum()),
        auroc=roc,
        auprc=pr,
        counts=counts,
        note=f"No Finding = all labels 0; score = {NORMAL_SCORE}; predicted normal when no finding passes its threshold"
        + (f"; {reason}" if reason else ""),
    )
