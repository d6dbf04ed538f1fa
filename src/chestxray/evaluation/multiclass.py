"""Multi-class metrics as pure functions: per-class one-vs-rest AUROC/AUPRC with patient-bootstrap CIs, their macro
and prevalence-weighted means, accuracy and balanced accuracy (with CIs) and the K x K confusion matrix.

The decision is the argmax class (no thresholds). y_true is one-hot (N, K) and y_score softmax probabilities (N, K).
Per-class rows and the macro mean come from `metrics.summarize` (one bootstrap rule for every task); the weighted
mean, accuracy and balanced accuracy are computed here on the same stratified patient replicates (same seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from chestxray.errors import DataError
from chestxray.evaluation.metrics import (
    MACRO_ELIGIBLE,
    FindingMetrics,
    Interval,
    Summary,
    _clean,
    _percentile_interval,
    check_arrays,
    counts_to_rates,
    patient_codes,
    patient_property,
    patient_strata,
    stratified_patient_counts,
    summarize,
    undefined_reason,
    weighted_auprc,
    weighted_auroc,
)
from chestxray.evaluation.sample_rule import RULE, passes

DECISION = "argmax"


def _classes(iv: Interval) -> Interval:
    """An interval whose reason speaks of findings, reworded for classes."""
    return replace(iv, reason=iv.reason.replace("findings", "classes")) if iv.reason else iv


@dataclass
class MulticlassMetrics:
    """What only a multi-class task has: argmax accuracy, balanced accuracy and the K x K confusion matrix."""

    classes: list[str]
    accuracy: Interval
    balanced_accuracy: Interval
    confusion: np.ndarray  # (K, K) int: rows true class, columns predicted class, in `classes` order
    decision: str = DECISION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (n/a is null with a reason)."""
        return _clean({"classes": self.classes, "decision": self.decision, "accuracy": asdict(self.accuracy),
                       "balanced_accuracy": asdict(self.balanced_accuracy),
                       "confusion_matrix": self.confusion.tolist()})


def check_one_hot_truth(t: np.ndarray) -> np.ndarray:
    """The true class index per image from one-hot rows; a row without exactly one 1 is a DataError."""
    bad = np.flatnonzero(t.sum(1) != 1)
    if bad.size:
        raise DataError(f"multi-class y_true of shape {t.shape} needs exactly one 1 per row; rows {bad[:5].tolist()} "
                        "do not (is this a multi-label task?)")
    return t.argmax(1)


def confusion_matrix(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: rows the true class index, columns the predicted one (scikit-learn's layout)."""
    return np.bincount(np.asarray(true) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def accuracy_from_weights(true: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy under each row of sample weights (B, N): share of (weighted) images whose argmax is right."""
    w = np.atleast_2d(weights).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ (true == pred)) / w.sum(1)


def balanced_accuracy_from_weights(true: np.ndarray, pred: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    """Mean per-class recall under each row of sample weights (B, N), over the classes present in that row."""
    w = np.atleast_2d(weights).astype(np.float64)
    member = (true[:, None] == np.arange(k)[None, :]).astype(np.float64)  # (N, K)
    hits = w @ (member * (true == pred)[:, None])
    support = w @ member
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        return np.nanmean(recall, axis=1)


def multiclass_summary(
    y_true: Any,
    y_score: Any,
    labels: Sequence[str],
    patient_ids: Sequence[Any],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    chunk: int = 200,
    log_odds: bool = False,
) -> tuple[Summary, MulticlassMetrics]:
    """Per-class one-vs-rest rows (with argmax confusion counts), macro and weighted rows, and the multi-class extras.

    Weighted = per-class AUROC/AUPRC weighted by class support (scikit-learn's average='weighted'). Scores rank and
    give the argmax: one-vs-rest log-odds (`log_odds`, as evaluate passes them; calibration reads their sigmoid) or
    probabilities.
    """
    t, s = check_arrays(y_true, y_score)
    labels = list(labels)
    k = len(labels)
    if t.shape[1] != k or k < 2:
        raise DataError(f"{k} class names for arrays of shape {t.shape}; a multi-class task needs K >= 2 matching")
    true = check_one_hot_truth(t)
    pred = s.argmax(1)
    base = summarize(t, s, labels, patient_ids, None, n_boot=n_boot, ci=ci, seed=seed, log_odds=log_odds)
    conf = confusion_matrix(true, pred, k)
    n = len(true)
    rows: list[FindingMetrics] = []
    for j, row in enumerate(base.rows[:k]):
        tp, fp, fn = int(conf[j, j]), int(conf[:, j].sum() - conf[j, j]), int(conf[j, :].sum() - conf[j, j])
        rows.append(replace(row, counts=counts_to_rates(tp, fp, fn, n - tp - fp - fn)))
    for macro in (r for r in base.rows if r.kind in ("macro", MACRO_ELIGIBLE)):
        rows.append(replace(macro, note=f"one-vs-rest, {macro.note.replace('findings', 'classes')}",
                            auroc=_classes(macro.auroc), auprc=_classes(macro.auprc)))
    failing = [r.name for r in rows[:k] if r.auroc.value is not None
               and not passes(r.positive_patients or 0, r.negative_patients or 0, base.min_patients)]
    short = (f"no interval: {len(failing)} of {k} classes have too few patients ({', '.join(failing)}); "
             f"{RULE}") if failing else None

    codes, n_pat = patient_codes(patient_ids)
    support = t.sum(0).astype(np.float64)
    counts = _replicate_counts(t, codes, n_pat, n_boot, seed)
    roc = np.full((n_boot, k), np.nan)
    pr = np.full((n_boot, k), np.nan)
    sup = np.zeros((n_boot, k))
    acc = np.full(n_boot, np.nan)
    bal = np.full(n_boot, np.nan)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        w = counts[start:stop][:, codes]  # (b, N) image weights
        for j in range(k):
            roc[start:stop, j] = weighted_auroc(t[:, j], s[:, j], w)
            pr[start:stop, j] = weighted_auprc(t[:, j], s[:, j], w)
        sup[start:stop] = w @ t
        acc[start:stop] = accuracy_from_weights(true, pred, w)
        bal[start:stop] = balanced_accuracy_from_weights(true, pred, k, w)
    roc_point = np.array([np.nan if r.auroc.value is None else r.auroc.value for r in rows[:k]])
    pr_point = np.array([np.nan if r.auprc.value is None else r.auprc.value for r in rows[:k]])
    rows.append(FindingMetrics(
        name="weighted", kind="weighted", n=n, positives=n,
        auroc=_percentile_interval(_weighted_mean(roc_point, support), _weighted_mean(roc, sup), ci,
                                   "AUROC undefined for every class", short),
        auprc=_percentile_interval(_weighted_mean(pr_point, support), _weighted_mean(pr, sup), ci,
                                   "AUPRC undefined for every class", short),
        note="one-vs-rest, mean weighted by class support",
    ))
    extras = MulticlassMetrics(
        classes=labels,
        accuracy=_percentile_interval(float(np.mean(true == pred)), acc, ci, None, short),
        balanced_accuracy=_percentile_interval(float(balanced_accuracy_from_weights(true, pred, k, np.ones(n))[0]),
                                               bal, ci, None, short),
        confusion=conf,
    )
    summary = Summary(rows, n_images=n, n_patients=n_pat, n_boot=n_boot, ci=ci, seed=seed,
                      normal_score="none (multiclass: the normal class is a class)")
    return summary, extras


def _replicate_counts(t: np.ndarray, codes: np.ndarray, n_pat: int, n_boot: int, seed: int) -> np.ndarray:
    """Per-patient draw counts (n_boot, P): the stratified resampling `summarize` makes for these classes with
    this seed (every class defined on the split stays defined), so every interval comes from the same replicates."""
    keep = [patient_property(t[:, j] == v, codes, n_pat) for j in range(t.shape[1])
            if undefined_reason(t[:, j]) is None for v in (0, 1)]
    strata = patient_strata(np.stack(keep, 1)) if keep else np.zeros(n_pat, dtype=np.int64)
    return stratified_patient_counts(strata, n_boot, np.random.default_rng(seed))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> Any:
    """Support-weighted mean over the classes where the value is defined (NaN skipped); works on (K,) or (B, K)."""
    v, w = np.atleast_2d(values), np.atleast_2d(weights)
    ok = np.isfinite(v) & (w > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(ok, v * w, 0.0).sum(1) / np.where(ok, w, 0.0).sum(1)
    if np.ndim(values) == 1:
        return None if not np.isfinite(out[0]) else float(out[0])
    return out
