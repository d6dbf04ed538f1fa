"""Per-label decision thresholds, chosen on the VALIDATION split only and stored in the bundle card.

Methods: "youden" (max sensitivity + specificity - 1, the default), "f1" (max F1) and
"sensitivity:0.9" (the highest threshold whose sensitivity reaches 0.9, i.e. the best specificity
at that sensitivity). A score >= threshold is called positive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from chestxray.errors import ConfigError
from chestxray.evaluation.methods import METHODS, ThresholdMethod, parse_method  # noqa: F401 (re-exported)
from chestxray.evaluation.metrics import check_with_missing, undefined_reason
from chestxray.inference.outputs import add_decisions
from chestxray.models.bundle import update_card

log = logging.getLogger(__name__)

FALLBACK = 0.5  # used for a label whose validation split has no positives or no negatives


def choose_threshold(y_true: Any, y_score: Any, method: str | ThresholdMethod = "youden") -> float:
    """One finding's threshold on validation scores (images where the label is missing, NaN, left out); FALLBACK
    (0.5) when it lacks positives or negatives."""
    m = parse_method(method)
    t, s = check_with_missing(y_true, y_score)
    keep = ~np.isnan(t[:, 0])
    t, s = t[keep, 0].astype(np.uint8), s[keep, 0]
    if undefined_reason(t) is not None:
        return FALLBACK
    if m.kind == "f1":
        precision, recall, thr = precision_recall_curve(t, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return float(thr[int(np.argmax(f1[:-1]))])  # the last PR point has no threshold
    fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # the first point is the +inf threshold (nothing positive)
    if m.kind == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    reach = np.flatnonzero(tpr >= (m.target or 0.0) - 1e-12)
    return float(thr[reach[0]])  # thresholds descend: the first to reach the target keeps the most specificity


def choose_thresholds(
    y_true: Any, y_score: Any, labels: Sequence[str], method: str | ThresholdMethod = "youden"
) -> dict[str, float]:
    """Thresholds per label from validation labels/scores (N, L), each on the images that annotate it (NaN:
    missing); labels without both classes there get 0.5 and a warning."""
    m = parse_method(method)
    t, s = check_with_missing(y_true, y_score)
    if t.shape[1] != len(labels):
        raise ConfigError(f"{len(labels)} label names for validation arrays of shape {t.shape}; they must match")
    out: dict[str, float] = {}
    for j, name in enumerate(labels):
        reason = undefined_reason(t[~np.isnan(t[:, j]), j])
        if reason is not None:
            log.warning("threshold for %s set to %.2f: validation split has %s", name, FALLBACK, reason)
        out[name] = choose_threshold(t[:, j], s[:, j], m)
    return out


def thresholds_from_frame(
    frame: pd.DataFrame, labels: Sequence[str], method: str | ThresholdMethod = "youden"
) -> dict[str, float]:
    """Thresholds from a predictions frame (true label columns and p_<label> score columns) of the validation split."""
    return choose_thresholds(frame[list(labels)].to_numpy(), frame[[f"p_{x}" for x in labels]].to_numpy(), labels, method)


def store_thresholds(
    bundle_dir: str | Path, thresholds: dict[str, float], method: str | ThresholdMethod, tta: str = "none",
    **fields: Any,
) -> dict[str, Any]:
    """Write thresholds, threshold_method ('<method> on val') and threshold_tta (the test-time augmentation the
    validation scores were made with), plus any other card `fields`, into the bundle card in one atomic write;
    returns the new card."""
    return update_card(
        bundle_dir,
        thresholds={k: float(v) for k, v in thresholds.items()},
        threshold_method=f"{parse_method(method)} on val",
        threshold_tta=tta,
        **fields,
    )


def apply_thresholds(frame: pd.DataFrame, labels: Sequence[str], thresholds: dict[str, float]) -> pd.DataFrame:
    """Add a 0/1 column pred_<label> per label (p_<label> >= threshold) to a copy of a predictions frame."""
    return add_decisions(frame, labels, thresholds)
