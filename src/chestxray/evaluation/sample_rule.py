"""The one minimum-sample rule for every interval and test: a binary task (a finding, the micro pool, 'normal', a
class one-vs-rest) gets a confidence interval or a p-value only when it has at least MIN_PATIENTS positive AND
MIN_PATIENTS negative patients; otherwise the number is replaced by words saying which class is short.

Why patients and both classes: a patient's images are correlated, so the information about how a model separates
the classes grows with the number of patients on each side, not images. With a handful of positive (or negative)
patients the bootstrap keeps the same few patients in every replicate (intervals too narrow: coverage 0.74 with 3
negative patients where 0.95 is promised) and the variance estimates of DeLong/Obuchowski rest on a handful of terms
(equal models called different 18-49 % of the time with 1-3 positive patients). docs/statistics.md gives these
simulations (bench/bench_statistics.py) and what 10 buys.
"""

from __future__ import annotations

import numpy as np

MIN_PATIENTS = 10  # per class: fewer positive or fewer negative patients, no interval and no test
RULE = (f"an interval or a test needs at least {MIN_PATIENTS} positive and {MIN_PATIENTS} negative patients "
        "(a patient counts for a class when one of its images has it)")


def class_patients(y: np.ndarray, codes: np.ndarray, n_patients: int) -> tuple[int, int]:
    """(positive patients, negative patients) of one binary task: patients with at least one positive image and
    patients with at least one negative image (a patient with both counts on both sides). y (N,) 0/1, codes (N,)."""
    y = np.asarray(y).ravel().astype(bool)
    codes = np.asarray(codes).ravel()
    pos = np.bincount(codes[y], minlength=n_patients) > 0
    neg = np.bincount(codes[~y], minlength=n_patients) > 0
    return int(pos.sum()), int(neg.sum())


def too_few(positive: int, negative: int, purpose: str = "an interval", minimum: int = MIN_PATIENTS) -> str | None:
    """Why a task gets no interval/test: 'too few positive patients (3 < 10) for a test', or None when it passes."""
    short = [f"{side} patients ({count} < {minimum})" for side, count in (("positive", positive), ("negative", negative))
             if count < minimum]
    if not short:
        return None
    return f"too few {' and '.join(short)} for {purpose}"


def passes(positive: int, negative: int, minimum: int = MIN_PATIENTS) -> bool:
    """True when a task has enough positive and negative patients for an interval or a test."""
    return positive >= minimum and negative >= minimum
