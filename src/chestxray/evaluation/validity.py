"""Which findings a bundle can decide on, and how well each was measured: the card's `findings` block.

A finding's threshold is *validated* when the validation split it was chosen on holds at least MIN_PATIENTS
positive and MIN_PATIENTS negative patients (chestxray.evaluation.sample_rule, the one minimum-sample rule). Below
that the threshold rests on a handful of patients, and with no positive (or no negative) patient at all it is a
placeholder (0.5, chestxray.evaluation.thresholds.FALLBACK). A finding that is not validated gets no decision on the
web page and in the API (`positive: null`), with the words saying why. Its quality is the evaluated split's AUROC with
its patient-bootstrap interval, or the rule's words where there is no interval; an interval that reaches 0.5 is
flagged (the model may be no better than chance on that finding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from chestxray.evaluation.bootstrap import patient_codes
from chestxray.evaluation.sample_rule import class_patients, too_few
from chestxray.evaluation.thresholds import FALLBACK

CHANCE = 0.5
REACHES_CHANCE = "the interval reaches 0.5: on this evidence the model may be no better than chance for it"


def threshold_status(val: pd.DataFrame, labels: Sequence[str], multiclass: bool = False) -> dict[str, dict[str, Any]]:
    """Per finding: validated (bool), why not (words or None), and the validation split's positive / negative
    patients. A multi-class task decides by argmax (no thresholds): every class is 'validated' as a decision rule
    and the patient counts say how much validation it had."""
    codes, n = patient_codes(val["patient_id"].astype(str).tolist())
    out: dict[str, dict[str, Any]] = {}
    for name in labels:
        y = val[name].to_numpy(dtype=float)
        given = ~np.isnan(y)  # a merged dataset: images whose source does not annotate the finding are left out
        pos, neg = class_patients(y[given], codes[given], n)
        if multiclass:
            why = None
        elif pos == 0 or neg == 0:
            why = (f"not validated: the validation split has no {'positive' if pos == 0 else 'negative'} patient, so "
                   f"its threshold is a placeholder ({FALLBACK:.2f}), not a choice")
        else:
            short = too_few(pos, neg, "a threshold to be trusted")
            why = f"not validated: {short} on the validation split" if short else None
        out[name] = {"validated": why is None, "why": why, "val_positive_patients": pos, "val_negative_patients": neg}
    return out


def finding_quality(summary: Any, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per finding from an evaluation summary: AUROC, its interval (or the words why none), the patients on each
    side, and whether the interval reaches 0.5."""
    out: dict[str, dict[str, Any]] = {}
    for name in labels:
        row = summary.row(name)
        iv = row.auroc
        reaches = None if iv.low is None or iv.high is None else bool(iv.low <= CHANCE <= iv.high)
        out[name] = {"auroc": _num(iv.value), "low": _num(iv.low), "high": _num(iv.high),
                     "note": iv.reason if iv.low is None else None, "positive_patients": row.positive_patients,
                     "negative_patients": row.negative_patients, "interval_reaches_chance": reaches}
    return out


def findings_block(val: pd.DataFrame, summary: Any, labels: Sequence[str], split: str,
                   multiclass: bool = False) -> dict[str, dict[str, Any]]:
    """The card's `findings`: threshold_status and the evaluated split's quality, per finding."""
    status = threshold_status(val, labels, multiclass)
    quality = finding_quality(summary, labels)
    return {name: {**status[name], "split": split, **quality[name]} for name in labels}


def quality_text(entry: dict[str, Any]) -> str:
    """'AUROC 0.81 [0.72, 0.88] on test', the rule's words, or 'not measured'; with the chance warning."""
    if entry.get("auroc") is None:
        return entry.get("note") or "not measured"
    text = f"AUROC {entry['auroc']:.2f}"
    if entry.get("low") is not None:
        text += f" [{entry['low']:.2f}, {entry['high']:.2f}]"
    elif entry.get("note"):
        text += f" (no interval: {entry['note']})"
    text += f" on {entry.get('split', 'test')}"
    return text + (f"; {REACHES_CHANCE}" if entry.get("interval_reaches_chance") else "")


def _num(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)

