"""Classification metrics as pure functions: arrays in, numbers out (no I/O, logging or device state).

Conventions: `y_true` holds 0/1 labels and `y_score` probabilities, shaped (N,) for one finding or
(N, L) for L findings. A metric that cannot be computed on a split (a finding with no positives or no
negatives) is None with a reason, never NaN; means are taken over the defined findings only and say
how many. Confidence intervals come from a bootstrap that resamples PATIENTS, not images, so the
images of one patient always enter a replicate together; resampling is stratified so that every finding defined
on the split stays defined in every replicate, and the macro mean is taken over the same findings in the estimate
and in every replicate (chestxray.evaluation.bootstrap). One minimum-sample rule (chestxray.evaluation.sample_rule):
a task with fewer than MIN_PATIENTS positive or fewer than MIN_PATIENTS negative patients gets its estimate without
an interval and words instead ("too few positive patients (3 < 10) for an interval"). The macro row is the mean over
every finding where AUROC is defined; it gets an interval only when each of those findings passes the rule (an
interval over findings that each are "too few" understates the uncertainty); a 'macro_eligible' row then gives the
mean with its interval over the findings that pass, and names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from chestxray.errors import DataError
from chestxray.evaluation.bootstrap import (  # noqa: F401 - re-exported: the bootstrap's public entry points
    SCHEME,
    SortedTask,
    bootstrap_counts,
    bootstrap_patient_counts,
    patient_codes,
    patient_property,
    patient_strata,
    stratified_patient_counts,
    weighted_auprc,
    weighted_auroc,
)
from chestxray.evaluation.sample_rule import MIN_PATIENTS, RULE, class_patients, too_few

NORMAL = "normal"
NORMAL_SCORE = "1 - max(p)"  # how the 'normal' (no finding) score is made from per-finding probabilities
MACRO_ELIGIBLE = "macro_eligible"  # the macro over the findings that pass the minimum-sample rule


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
    positive_patients: int | None = None
    negative_patients: int | None = None
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
    strata: int = 1
    min_patients: int = MIN_PATIENTS

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
            rec: dict[str, Any] = {"finding": r.name, "kind": r.kind, "n": r.n, "positives": r.positives,
                                   "positive_patients": r.positive_patients,
                                   "negative_patients": r.negative_patients}
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
            "bootstrap": {"replicates": self.n_boot, "ci": self.ci, "seed": self.seed, "unit": "patient",
                          "scheme": SCHEME, "strata": self.strata,
                          "macro": "mean over the same findings (those defined on the split) in the estimate and "
                                   "in every replicate; an interval only when each of them passes the minimum-sample "
                                   f"rule, else {MACRO_ELIGIBLE!r} gives the mean and interval over those that pass",
                          "min_patients": self.min_patients,
                          "rule": RULE},
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


def check_with_missing(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Like check_arrays, but y_true may hold NaN where a label is missing (a merged dataset whose source does not
    annotate it): returns y_true float64 (N, L) of 0/1/NaN and y_score float64 (N, L)."""
    t = np.asarray(y_true, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    given = ~np.isnan(t)
    filled, s = check_arrays(np.where(given, t, 0), y_score)
    return np.where(given, filled, np.nan), s


def annotated(y_true: np.ndarray, y_score: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finding j's labels (uint8) and scores on the images where it is annotated, and that (N,) mask; y_true from
    check_with_missing."""
    mask = ~np.isnan(y_true[:, j])
    return y_true[mask, j].astype(np.uint8), y_score[mask, j], mask


NOT_ANNOTATED = "not annotated for any image here (the source does not label it)"


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


def _percentile_interval(point: float | None, reps: np.ndarray, ci: float, reason: str | None,
                         short: str | None = None) -> Interval:
    """Percentile interval over the replicates in which the metric is defined (their count is kept); no interval
    but the words `short` when the task fails the minimum-sample rule (a resampled handful says nothing honest)."""
    if point is None:
        return Interval(None, reason=reason)
    if short is not None:
        return Interval(point, reason=short)
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return Interval(point, reason="no bootstrap replicate defined", replicates=0)
    lo, hi = np.percentile(ok, [50 * (1 - ci), 50 * (1 + ci)])
    return Interval(point, float(lo), float(hi), replicates=int(ok.size))


def _curve_intervals(
    y: np.ndarray, score: np.ndarray, roc_reps: np.ndarray, pr_reps: np.ndarray, ci: float, no_positives: str,
    short: str | None,
) -> tuple[Interval, Interval, str | None]:
    """AUROC and AUPRC of one binary task with bootstrap intervals, and why AUROC is undefined (None if defined)."""
    reason = undefined_reason(y)
    pr_reason = no_positives if int(np.sum(y)) == 0 else None
    return (_percentile_interval(auroc(y, score), roc_reps, ci, reason, short),
            _percentile_interval(auprc(y, score), pr_reps, ci, pr_reason, short), reason)


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
    min_patients: int = MIN_PATIENTS,
) -> Summary:
    """Per-finding, macro, micro and (multi-label) normal metrics with patient-bootstrap CIs.

    AUROC/AUPRC get percentile intervals from `n_boot` replicates of a stratified patient resampling (seeded
    numpy Generator) in which every finding defined on the split stays defined; a task with fewer than
    `min_patients` positive or negative patients gets no interval (chestxray.evaluation.sample_rule). Threshold
    metrics use `thresholds` (label -> probability; score >= t is positive).
    """
    t, s = check_with_missing(y_true, y_score)  # NaN: missing for that image, left out of that finding's metrics
    labels = list(labels)
    if t.shape[1] != len(labels):
        raise DataError(f"{len(labels)} label names for arrays of shape {t.shape}; they must match")
    if len(patient_ids) != t.shape[0]:
        raise DataError(f"{len(patient_ids)} patient ids for {t.shape[0]} images; give one per image")
    if not 0 < ci < 1:
        raise DataError(f"ci must be in (0, 1); got {ci}")
    n, n_lab = t.shape
    multi = n_lab > 1
    given = ~np.isnan(t)
    norm_t, norm_s, norm_m = normal_with_missing(t, s)

    # Bootstrap (chestxray.evaluation.bootstrap): per-patient counts from a stratified resampling that keeps
    # every defined task defined; each task (finding, micro pool, normal) is sorted once and scored for all
    # replicates with a few vectorised passes. A finding's task holds the images that annotate it (all of them
    # unless the dataset leaves labels missing).
    codes, n_pat = patient_codes(patient_ids)
    tasks = [(t[given[:, j], j].astype(np.uint8), s[given[:, j], j], codes[given[:, j]]) for j in range(n_lab)]
    if multi:
        flat = given.ravel("F")  # micro: every annotated (image, finding) pair
        tasks.append((t.ravel("F")[flat].astype(np.uint8), s.ravel("F")[flat], np.tile(codes, n_lab)[flat]))
        tasks.append((norm_t, norm_s, codes[norm_m]))
    sides = [class_patients(y, c, n_pat) for y, _, c in tasks]
    short = [too_few(p, q, "an interval", min_patients) for p, q in sides]
    keep = [patient_property(y == v, c, n_pat) for y, _, c in tasks if undefined_reason(y) is None for v in (0, 1)]
    strata = patient_strata(np.stack(keep, 1)) if keep else np.zeros(n_pat, dtype=np.int64)
    counts = stratified_patient_counts(strata, n_boot, np.random.default_rng(seed))
    roc_reps = np.full((n_boot, len(tasks)), np.nan)
    pr_reps = np.full((n_boot, len(tasks)), np.nan)
    for k, (y, sc, c) in enumerate(tasks):
        roc_reps[:, k], pr_reps[:, k] = SortedTask(y, sc, c, n_pat).replicates(counts)

    thresholds = thresholds or {}
    rows: list[FindingMetrics] = []
    for j, name in enumerate(labels):
        y, score, _ = tasks[j]
        m = len(y)
        roc, pr, reason = _curve_intervals(y, score, roc_reps[:, j], pr_reps[:, j], ci,
                                           f"no positives among {m} images", short[j])
        if m == 0:
            reason = NOT_ANNOTATED
            roc, pr = Interval(None, reason=reason), Interval(None, reason=reason)
        thr = thresholds.get(name)
        rows.append(
            FindingMetrics(
                name=name,
                kind="finding",
                n=m,
                positives=int(y.sum()),
                auroc=roc,
                auprc=pr,
                positive_patients=sides[j][0],
                negative_patients=sides[j][1],
                threshold=thr,
                counts=threshold_counts(y, score, thr) if thr is not None and m else None,
                ece=expected_calibration_error(y, score, n_bins) if m else None,
                note="; ".join(x for x in (reason, f"{n - m} of {n} images do not annotate it (left out)"
                                            if 0 < m < n else "") if x),
            )
        )
    if multi:
        findings = list(rows)
        rows.extend(macro_rows(findings, roc_reps[:, :n_lab], pr_reps[:, :n_lab], ci, n, short[:n_lab], min_patients))
        rows.append(_micro_row(tasks[n_lab][0], tasks[n_lab][1], n_lab, findings, roc_reps[:, n_lab],
                               pr_reps[:, n_lab], ci, n_bins, sides[n_lab], short[n_lab]))
        rows.append(_normal_row(s[norm_m], norm_t, norm_s, thresholds, labels, roc_reps[:, n_lab + 1],
                                pr_reps[:, n_lab + 1], ci, sides[n_lab + 1], short[n_lab + 1],
                                missing=not given.all()))
    return Summary(rows, n_images=n, n_patients=n_pat, n_boot=n_boot, ci=ci, seed=seed,
                   strata=int(strata.max()) + 1 if n_pat else 0, min_patients=min_patients)


def macro_rows(
    rows: list[FindingMetrics], roc_reps: np.ndarray, pr_reps: np.ndarray, ci: float, n: int,
    short: Sequence[str | None], min_patients: int = MIN_PATIENTS, what: str = "findings",
) -> list[FindingMetrics]:
    """The 'macro' row: the unweighted mean over every finding where a metric is defined, the SAME findings in the
    estimate and in every replicate, with an interval only when each of them passes the minimum-sample rule; and
    when some but not all do, a 'macro_eligible' row: the mean and its interval over the findings that pass."""
    defined = [j for j, r in enumerate(rows) if r.auroc.value is not None]
    eligible = [j for j in defined if short[j] is None]
    failing = [rows[j].name for j in defined if j not in eligible]
    short = None
    if failing:
        short = (f"no interval: {len(failing)} of the {len(defined)} {what} in the mean have too few patients "
                 f"({', '.join(failing)}); each needs at least {min_patients} positive and {min_patients} negative "
                 f"patients" + (f"; see {MACRO_ELIGIBLE!r} for the {len(eligible)} that do" if eligible else ""))
    out = [_mean_row("macro", "macro", rows, defined, roc_reps, pr_reps, ci, n, short,
                     f"mean over the same {len(defined)} of {len(rows)} {what} (AUROC defined) in the estimate and "
                     "in every bootstrap replicate")]
    if failing and eligible:
        names = ", ".join(rows[j].name for j in eligible)
        out.append(_mean_row(MACRO_ELIGIBLE, MACRO_ELIGIBLE, rows, eligible, roc_reps, pr_reps, ci, n, None,
                             f"mean over the {len(eligible)} of {len(rows)} {what} with at least {min_patients} "
                             f"positive and {min_patients} negative patients: {names}"))
    return out


def _mean_row(
    name: str, kind: str, rows: list[FindingMetrics], keep: list[int], roc_reps: np.ndarray, pr_reps: np.ndarray,
    ci: float, n: int, short: str | None, note: str,
) -> FindingMetrics:
    """Unweighted means over the findings `keep` (AUROC, AUPRC where defined, threshold rates, ECE), with
    intervals from the same replicates (a replicate where one of them is undefined is not used, and counted)."""
    part = [rows[j] for j in keep]

    def mean_interval(vals: list[float | None], reps: np.ndarray, what: str) -> Interval:
        have = [j for j, v in zip(keep, vals) if v is not None]
        if not have:
            return Interval(None, reason=f"{what} undefined for every finding")
        point = float(np.mean([v for v in vals if v is not None]))
        return _percentile_interval(point, reps[:, have].mean(1), ci, None, short)

    roc = mean_interval([r.auroc.value for r in part], roc_reps, "AUROC")
    pr = mean_interval([r.auprc.value for r in part], pr_reps, "AUPRC")
    have = [r.counts for r in part if r.counts is not None]
    counts = None
    if have:
        def avg(key: str) -> float | None:
            vals = [getattr(c, key) for c in have if getattr(c, key) is not None]
            return float(np.mean(vals)) if vals else None

        counts = ThresholdCounts(
            *_pooled_counts(have), avg("sensitivity"), avg("specificity"), avg("precision"), avg("f1"), avg("accuracy"),
        )
    eces = [r.ece for r in part if r.ece is not None]
    used = f"; {roc.replicates} usable bootstrap replicates" if roc.low is not None else ""
    return FindingMetrics(
        name=name,
        kind=kind,
        n=n,
        positives=sum(r.positives for r in part),
        auroc=roc,
        auprc=pr,
        counts=counts,
        ece=float(np.mean(eces)) if eces else None,
        note=note + used,
    )


def _micro_row(
    flat_t: np.ndarray, flat_s: np.ndarray, n_labels: int, rows: list[FindingMetrics], roc_reps: np.ndarray,
    pr_reps: np.ndarray, ci: float, n_bins: int, sides: tuple[int, int], short: str | None,
) -> FindingMetrics:
    """All annotated (image, finding) pairs pooled into one binary problem; counts pooled over thresholded
    findings."""
    roc, pr, _ = _curve_intervals(flat_t, flat_s, roc_reps, pr_reps, ci, "no positives in any finding", short)
    have = [r.counts for r in rows if r.counts is not None]
    return FindingMetrics(
        name="micro",
        kind="micro",
        n=int(flat_t.size),
        positives=int(flat_t.sum()),
        auroc=roc,
        auprc=pr,
        positive_patients=sides[0],
        negative_patients=sides[1],
        counts=counts_to_rates(*_pooled_counts(have)) if have else None,
        ece=expected_calibration_error(flat_t, flat_s, n_bins),
        note=f"all {n_labels} findings pooled ({flat_t.size} annotated image-finding pairs)",
    )


def normal_with_missing(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'Normal' where labels may be missing (NaN): truth 1 when every annotated label is 0, 0 when one is 1; images
    annotating no label are left out (the returned (N,) mask keeps the others). Score 1 - max(p) over all labels.
    With nothing missing this is normal_truth_and_score on every image."""
    given = ~np.isnan(t)
    keep = given.any(1)
    positive = (np.where(given, t, 0) == 1).any(1)
    return (~positive[keep]).astype(np.uint8), 1.0 - s[keep].max(1), keep


def _normal_row(
    s: np.ndarray, norm_t: np.ndarray, norm_s: np.ndarray, thresholds: dict[str, float],
    labels: list[str], roc_reps: np.ndarray, pr_reps: np.ndarray, ci: float, sides: tuple[int, int],
    short: str | None, missing: bool = False,
) -> FindingMetrics:
    """'No Finding' detection: scored by 1 - max(p); predicted normal when no finding passes its threshold."""
    roc, pr, reason = _curve_intervals(norm_t, norm_s, roc_reps, pr_reps, ci, "no normal images", short)
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
        positive_patients=sides[0],
        negative_patients=sides[1],
        counts=counts,
        note=(f"No Finding = all labels 0{' (among those the image annotates)' if missing else ''}; score = "
              f"{NORMAL_SCORE}; predicted normal when no finding passes its threshold" + (f"; {reason}" if reason
                                                                                           else "")),
    )
