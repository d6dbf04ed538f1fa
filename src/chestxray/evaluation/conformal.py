"""Conformal guarantees on a site's labelled sample: a bound on missed findings, and class prediction sets.

**Missed findings (multi-label, and the one finding of a binary task).** MAPIE's MultiLabelClassificationController
(risk "recall", method "crc": conformal risk control, Angelopoulos et al. 2022) picks one threshold λ for all
findings so that, for a new image exchangeable with the calibration images, the expected share of its true findings
left out of {findings with p > λ} is at most α. MAPIE's risk is recall averaged over images and is undefined for an
image without any finding, so it rejects such images. We therefore calibrate on the images with at least one finding
and say so: the guarantee holds for images that have a finding (the ones a miss can hurt), conditional on that;
images without a finding ("No Finding") are reported apart, by how often their set is empty (called normal) and how
large it is. The bound needs at least (1 - α) / α such images (19 for α = 0.05); with fewer no threshold is valid and
the set is every finding, which the result says.

**Prediction sets (binary and multi-class).** A Mondrian (class-conditional) split-conformal classifier from crepes
on the non-conformity score 1 - p(class): each class's set membership is calibrated on that class's images, so the
coverage 1 - α holds for NORMAL and PNEUMONIA images separately (a marginal guarantee could be met by always
saying the majority class at a site where nearly every image is positive). A class with fewer than (1 - α) / α
calibration images can never be left out of a set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from chestxray.errors import ConfigError

GRID = np.linspace(0.0, 1.0, 501)[:-1]  # thresholds λ MAPIE tries (fixed before seeing data, as CRC requires)


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ConfigError(f"the conformal bound must be a share in (0, 1), e.g. 0.05 to miss at most 5 %; got {alpha}")
    return float(alpha)


def min_calibration(alpha: float) -> int:
    """Smallest calibration size for which a conformal bound at level alpha can be met at all."""
    return math.ceil((1 - alpha) / alpha)


def fit_recall_control(y: Any, p: Any, alpha: float, grid: np.ndarray = GRID) -> dict[str, Any]:
    """λ from MAPIE conformal risk control of recall on (N, L) labels and probabilities; images without a finding are
    left out of the calibration (MAPIE rejects them) and counted."""
    from mapie.risk_control import MultiLabelClassificationController

    alpha = _check_alpha(alpha)
    y, p = np.asarray(y, int).reshape(len(y), -1), np.asarray(p, float).reshape(len(p), -1)
    has = y.sum(1) > 0
    out = {"method": "MAPIE MultiLabelClassificationController, risk recall, method crc",
           "alpha": alpha, "n_calibration": int(has.sum()), "n_no_finding_left_out": int((~has).sum()),
           "min_calibration": min_calibration(alpha), "rule": "a finding is in the set when p > lambda",
           "guarantee": f"expected share of an image's findings left out of its set <= {alpha:g}, for images with "
                        "at least one finding (No Finding images excluded from calibration: MAPIE's recall is "
                        "undefined for them)"}
    if has.sum() < out["min_calibration"]:
        out.update(threshold=0.0, feasible=False, note=(
            f"{int(has.sum())} calibration image(s) with a finding; at least {out['min_calibration']} are needed "
            f"for a {alpha:g} bound, so the set is every finding"))
        return out
    controller = MultiLabelClassificationController(predict_function=lambda x: x, risk="recall", method="crc",
                                                    target_level=1 - alpha, predict_params=grid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        controller.calibrate(p[has], y[has])
    feasible = not any("cannot be controlled" in str(w.message) for w in caught)
    out.update(threshold=float(controller.best_predict_param[0]) if feasible else 0.0, feasible=feasible)
    if not feasible:
        out["note"] = "no threshold keeps the bound on this sample; the set is every finding"
    return out


def recall_sets(p: Any, threshold: float) -> np.ndarray:
    """(N, L) bool: findings in each image's set (p > threshold, MAPIE's rule)."""
    return np.asarray(p, float) > threshold


def evaluate_recall_control(y: Any, p: Any, threshold: float) -> dict[str, Any]:
    """Achieved miss rate and set sizes on held-out images: the per-image miss share averaged over images with a
    finding (the quantity bounded), the pooled share of findings missed, and what No Finding images get."""
    y, p = np.asarray(y, int).reshape(len(y), -1), np.asarray(p, float).reshape(len(p), -1)
    sets = recall_sets(p, threshold)
    has = y.sum(1) > 0
    missed = (y == 1) & ~sets
    per_image = missed[has].sum(1) / y[has].sum(1)
    return {"n_images": int(len(y)), "n_with_finding": int(has.sum()), "n_no_finding": int((~has).sum()),
            "miss_rate": float(per_image.mean()) if has.any() else None,
            "findings_missed": int(missed.sum()), "findings": int(y.sum()),
            "pooled_miss_share": float(missed.sum() / y.sum()) if y.sum() else None,
            "mean_set_size": float(sets.sum(1).mean()) if len(y) else None,
            "mean_set_size_with_finding": float(sets[has].sum(1).mean()) if has.any() else None,
            "no_finding_empty_set_share": float((sets[~has].sum(1) == 0).mean()) if (~has).any() else None,
            "no_finding_mean_set_size": float(sets[~has].sum(1).mean()) if (~has).any() else None}


def class_probabilities(p: Any, multiclass: bool) -> np.ndarray:
    """(N, K) class probabilities: the softmax output of a multi-class bundle, or [1 - p, p] for one finding."""
    p = np.asarray(p, float).reshape(len(p), -1)
    if multiclass:
        return p
    if p.shape[1] != 1:
        raise ConfigError("class prediction sets need a binary (one-finding) or multi-class task")
    return np.column_stack([1 - p[:, 0], p[:, 0]])


def fit_class_sets(classes_true: Any, probs: Any, alpha: float, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class cut-offs of a Mondrian split-conformal classifier (crepes, non-smoothed p-values): class c is in
    an image's set when 1 - p(c) <= cutoff[c] (None: always, too few images of c)."""
    from crepes import ConformalClassifier

    alpha = _check_alpha(alpha)
    yc, probs = np.asarray(classes_true, int), np.asarray(probs, float)
    scores = 1 - probs[np.arange(len(yc)), yc]
    cc = ConformalClassifier().fit(scores, bins=yc)
    cutoffs: dict[str, float | None] = {}
    counts = {}
    for c, name in enumerate(class_names):
        cal = np.sort(scores[yc == c])[::-1]
        counts[name] = int(cal.size)
        # crepes includes c when (#{cal >= s} + 1) / (n + 1) >= alpha: s up to the k-th largest calibration score
        k = math.ceil(alpha * (cal.size + 1)) - 1
        cutoffs[name] = float(cal[k - 1]) if k >= 1 else None
    return {"method": "crepes ConformalClassifier, Mondrian by true class (class-conditional), non-smoothed "
                      "p-values, non-conformity 1 - p(class)",
            "alpha": alpha, "classes": list(class_names), "cutoffs": cutoffs, "n_per_class": counts,
            "min_per_class": min_calibration(alpha), "_crepes": cc,
            "guarantee": f"for each class, a new image of that class has it in its set with probability >= "
                         f"{1 - alpha:g}"}


def class_sets(probs: Any, fitted: dict[str, Any]) -> np.ndarray:
    """(N, K) bool prediction sets from stored cut-offs (crepes' rule, without crepes)."""
    probs = np.asarray(probs, float)
    out = np.ones(probs.shape, dtype=bool)
    for c, name in enumerate(fitted["classes"]):
        cut = fitted["cutoffs"][name]
        if cut is not None:
            out[:, c] = (1 - probs[:, c]) <= cut
    return out


def crepes_class_sets(probs: Any, fitted: dict[str, Any]) -> np.ndarray:
    """(N, K) bool prediction sets from the fitted crepes classifier itself (used to check the stored cut-offs)."""
    probs = np.asarray(probs, float)
    cc = fitted["_crepes"]
    cols = [cc.predict_p(1 - probs[:, c], bins=np.full(len(probs), c), smoothing=False) >= fitted["alpha"]
            for c in range(probs.shape[1])]
    return np.column_stack(cols)


def evaluate_class_sets(classes_true: Any, sets: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Coverage overall and per true class, and set sizes, on held-out images."""
    yc = np.asarray(classes_true, int)
    covered = sets[np.arange(len(yc)), yc]
    size = sets.sum(1)
    return {"n_images": int(len(yc)), "coverage": float(covered.mean()) if len(yc) else None,
            "coverage_per_class": {n: (float(covered[yc == c].mean()) if (yc == c).any() else None)
                                   for c, n in enumerate(class_names)},
            "n_per_class": {n: int((yc == c).sum()) for c, n in enumerate(class_names)},
            "mean_set_size": float(size.mean()) if len(yc) else None,
            "set_size_counts": {str(k): int((size == k).sum()) for k in range(sets.shape[1] + 1)}}
