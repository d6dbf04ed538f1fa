"""Recalibration on a site's labelled sample: temperature, Platt or isotonic maps, chosen by a stated rule.

The rule (SELECTION_RULE): every candidate — no change (0 parameters), temperature (1), Platt (2), isotonic (one
step per distinct score) — is fitted and scored by its log-loss on held-out folds (GroupKFold by patient, so one
patient's images never sit on both sides); the candidate with the fewest parameters whose mean held-out log-loss
exceeds the best by at most one standard error of their paired per-image difference is chosen (Breiman's
one-standard-error rule, paired because every candidate scores the same held-out images). At small N this keeps the
simple maps unless a flexible one is clearly better. One method serves all labels of a task (their log-losses are
summed), fitted per label; a label whose sample lacks positives or negatives keeps no map.

Temperature is fitted by a one-dimensional search (scipy), Platt by an unpenalised logistic regression on the logit
and isotonic by scikit-learn's IsotonicRegression. scikit-learn's CalibratedClassifierCV also has temperature and
sigmoid maps, but it calibrates an estimator rather than stored scores and keeps their parameters in private
attributes, which a JSON site profile cannot rely on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from chestxray.evaluation.bootstrap import patient_codes, patient_property, stratified_patient_counts
from chestxray.evaluation.metrics import Interval, _percentile_interval, calibration_bins
from chestxray.evaluation.sample_rule import too_few
from chestxray.inference.site import EPS, apply_step, logit, sigmoid

CANDIDATES = ("none", "temperature", "platt", "isotonic")
MULTICLASS_CANDIDATES = ("none", "softmax_temperature")  # classes calibrated jointly: one temperature
MONOTONE = ("none", "temperature", "platt")  # strictly increasing maps: a threshold maps through them exactly
SELECTION_RULE = ("fewest parameters whose mean log-loss on held-out folds (GroupKFold by patient) exceeds the "
                  "lowest by at most one standard error of the paired per-image difference")
MIN_CLASS_IMAGES = 2  # a label needs this many positive and negative images to get a map


def log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-image binary log-loss with p clipped to [EPS, 1 - EPS]."""
    q = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    y = np.asarray(y, float)
    return -(y * np.log(q) + (1 - y) * np.log1p(-q))


def fit_map(kind: str, y: np.ndarray, p: np.ndarray) -> dict[str, Any] | None:
    """Parameters of one map for one label from labels y (N,) and probabilities p (N,); None for 'none'."""
    y, z = np.asarray(y, float), logit(p)
    if kind == "none":
        return None
    if kind == "temperature":
        res = minimize_scalar(lambda lt: log_loss(y, sigmoid(z / np.exp(lt))).mean(), bounds=(-4.0, 4.0),
                              method="bounded")
        return {"t": float(np.exp(res.x))}
    if kind == "platt":
        lr = LogisticRegression(C=np.inf, max_iter=1000).fit(z[:, None], y.astype(int))
        return {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
    if kind == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(np.asarray(p, float), y)
        return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    raise ValueError(f"unknown calibration map {kind!r}")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def multiclass_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-image log-loss of one-hot labels y (N, K) under class probabilities p (N, K)."""
    return -np.log(np.clip((np.asarray(p, float) * np.asarray(y, float)).sum(1), EPS, 1.0))


def n_parameters(kind: str, params: dict[str, Any] | None) -> int:
    """Free parameters of a fitted map (isotonic: its steps)."""
    if kind == "isotonic" and params:
        return len(params["x"])
    return {"none": 0, "temperature": 1, "platt": 2, "isotonic": 2}.get(kind, 0)


def usable(y: np.ndarray) -> bool:
    """A label can be calibrated when the sample has enough positives and negatives."""
    y = np.asarray(y)
    return int(y.sum()) >= MIN_CLASS_IMAGES and int((1 - y).sum()) >= MIN_CLASS_IMAGES


def fit_maps(kind: str, y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """One site-profile step: the map `kind` fitted per label on (N, L) labels and probabilities (one temperature
    for all classes of a multi-class task: 'softmax_temperature')."""
    if kind == "softmax_temperature":
        logp = np.log(np.clip(p, EPS, 1.0))
        res = minimize_scalar(lambda lt: multiclass_log_loss(y, _softmax(logp / np.exp(lt))).mean(),
                              bounds=(-4.0, 4.0), method="bounded")
        return {"kind": kind, "t": float(np.exp(res.x))}
    params = {}
    for j, name in enumerate(labels):
        if kind != "none" and usable(y[:, j]):
            params[name] = fit_map(kind, y[:, j], p[:, j])
    return {"kind": kind, "params": params}


@dataclass
class Choice:
    """The chosen method, its step, and the cross-validated log-loss (mean, standard error) of every candidate."""

    method: str
    step: dict[str, Any]
    cv: dict[str, dict[str, float]] = field(default_factory=dict)
    folds: int = 0
    rule: str = SELECTION_RULE


def cross_validated_loss(kind: str, y: np.ndarray, p: np.ndarray, labels: Sequence[str], groups: np.ndarray,
                         folds: int, multiclass: bool = False) -> np.ndarray:
    """Held-out log-loss per image (summed over labels, or of the true class) of map `kind` fitted on the other
    folds."""
    loss = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=folds).split(p, y, groups):
        step = fit_maps(kind, y[train], p[train], labels)
        q = apply_step(step, p[test], labels)
        loss[test] = multiclass_log_loss(y[test], q) if multiclass else log_loss(y[test], q).sum(1)
    return loss


def choose_map(y: Any, p: Any, labels: Sequence[str], patient_ids: Sequence[Any], folds: int = 5,
               candidates: Sequence[str] | None = None, multiclass: bool = False) -> Choice:
    """Fit every candidate map and choose one by SELECTION_RULE; y, p are (N, L) labels and probabilities
    (multi-class: one-hot labels and softmax probabilities, candidates MULTICLASS_CANDIDATES)."""
    candidates = candidates or (MULTICLASS_CANDIDATES if multiclass else CANDIDATES)
    y, p = np.asarray(y, float).reshape(len(y), -1), np.asarray(p, float).reshape(len(p), -1)
    codes, n_pat = patient_codes(patient_ids)
    k = int(min(folds, n_pat))
    if k < 2:
        return Choice("none", fit_maps("none", y, p, labels), folds=0)
    losses = {kind: cross_validated_loss(kind, y, p, labels, codes, k, multiclass) for kind in candidates}
    best = min(losses, key=lambda c: losses[c].mean())
    cv: dict[str, dict[str, float]] = {}
    for kind, loss in losses.items():
        diff = loss - losses[best]  # paired by image: the same held-out images score every candidate
        cv[kind] = {"log_loss": float(loss.mean()), "minus_best": float(diff.mean()),
                    "se_minus_best": float(diff.std(ddof=1) / np.sqrt(len(diff)))}
    order = [c for c in (*CANDIDATES, *MULTICLASS_CANDIDATES) if c in cv]  # fewest parameters first
    method = next(c for c in order if cv[c]["minus_best"] <= cv[c]["se_minus_best"])
    return Choice(method, fit_maps(method, y, p, labels), cv, k)


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


@dataclass(frozen=True)
class CalibrationScores:
    """ECE and Brier score of one label's probabilities, with patient-bootstrap intervals."""

    ece: Interval
    brier: Interval


def calibration_scores(y: Any, p: Any, patient_ids: Sequence[Any], n_boot: int = 1000, ci: float = 0.95,
                       seed: int = 0, n_bins: int = 10) -> CalibrationScores:
    """ECE (equal-width bins) and Brier of one label, intervals from a patient bootstrap stratified to keep
    positive and negative patients; no interval with fewer than MIN_PATIENTS of either (sample_rule)."""
    y, p = np.asarray(y, float).ravel(), np.asarray(p, float).ravel()
    codes, n_pat = patient_codes(patient_ids)
    pos, neg = patient_property(y == 1, codes, n_pat), patient_property(y == 0, codes, n_pat)
    strata = np.where(pos & ~neg, 0, np.where(neg & ~pos, 1, 2))
    counts = stratified_patient_counts(np.unique(strata, return_inverse=True)[1], n_boot,
                                       np.random.default_rng(seed))[:, codes]
    ece_reps, brier_reps = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        idx = np.repeat(np.arange(len(y)), counts[b])
        ece_reps[b] = calibration_bins(y[idx], p[idx], n_bins).ece if idx.size else np.nan
        brier_reps[b] = brier(y[idx], p[idx]) if idx.size else np.nan
    ece = calibration_bins(y, p, n_bins).ece if len(y) else None
    return CalibrationScores(_interval(ece, ece_reps, ci, int(pos.sum()), int(neg.sum())),
                             _interval(brier(y, p) if len(y) else None, brier_reps, ci, int(pos.sum()),
                                       int(neg.sum())))


def _interval(point: float | None, reps: np.ndarray, ci: float, pos: int, neg: int) -> Interval:
    """The evaluation's minimum-sample rule (chestxray.evaluation.sample_rule): no interval with fewer than
    MIN_PATIENTS positive or negative patients (a resampled handful says nothing honest)."""
    return _percentile_interval(point, reps, ci, "no images", too_few(pos, neg, "an interval"))
