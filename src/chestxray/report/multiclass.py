"""The multi-class part of a run report: accuracy cards, the K x K confusion table and captions that say the
decision is the argmax class (thresholds do not apply). Empty for other tasks."""

from __future__ import annotations

from typing import Any

CAPTIONS = {
    "auroc": "One-vs-rest AUROC per class with patient-bootstrap confidence intervals; macro and weighted in orange.",
    "roc": "One-vs-rest ROC curve per class (the class against all others); no operating point: the predicted class "
           "is the argmax, thresholds do not apply.",
    "pr": "One-vs-rest precision-recall curve per class; dashed line: the class's prevalence (a random model).",
    "confusion": "Confusion matrix of the argmax decision: rows the true class, columns the predicted class "
                 "(counts and share of each true row).",
    "calibration": "Reliability of the softmax probabilities, each class one-vs-rest (pooled in red), and ECE.",
}


def _interval_text(iv: dict[str, Any]) -> tuple[str, str]:
    """('0.812', ' [0.770, 0.850]') for a value with its CI; ('n/a', '') when undefined."""
    if iv.get("value") is None:
        return "n/a", ""
    ci = f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv.get("low") is not None else ""
    return f"{iv['value']:.3f}", ci


def multiclass_context(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Template data from eval/metrics.json's 'multiclass' block: cards, confusion table, captions; None if absent."""
    block = metrics.get("multiclass")
    if not block:
        return None
    cards = []
    for key, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")):
        value, ci = _interval_text(block.get(key) or {})
        cards.append({"key": f"{name}{ci}", "value": value})
    classes = list(block["classes"])
    rows = [{"name": name, "cells": [{"value": v, "share": v / max(sum(row), 1), "diag": i == j}
                                     for j, v in enumerate(row)], "total": sum(row)}
            for i, (name, row) in enumerate(zip(classes, block["confusion_matrix"], strict=True))]
    return {"cards": cards, "classes": classes, "rows": rows, "captions": CAPTIONS,
            "decision": "predicted class = argmax of the softmax probabilities; thresholds do not apply"}
