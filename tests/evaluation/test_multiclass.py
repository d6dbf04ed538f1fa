"""Multi-class metrics against scikit-learn: one-vs-rest AUROC (per class, macro, weighted), accuracy, balanced
accuracy, the K x K confusion matrix, and patient-bootstrap intervals that cover the estimate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
)

from chestxray.errors import DataError
from chestxray.evaluation.multiclass import (
    accuracy_from_weights,
    balanced_accuracy_from_weights,
    multiclass_summary,
)

CLASSES = ["NORMAL", "BACTERIA", "VIRUS", "COVID"]


def _data(n: int = 240, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Imbalanced classes, informative but imperfect softmax scores, two images per patient."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.4, 0.3, 0.2, 0.1])
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, [f"p{i // 2}" for i in range(n)]


def test_point_estimates_match_scikit_learn() -> None:
    y, probs, patients = _data()
    summary, mc = multiclass_summary(np.eye(4, dtype=int)[y], probs, CLASSES, patients, n_boot=100)
    guess = probs.argmax(1)
    for k, name in enumerate(CLASSES):
        row = summary.row(name)
        assert row.auroc.value == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        assert row.auprc.value == pytest.approx(average_precision_score(y == k, probs[:, k]))
        assert row.counts.sensitivity == pytest.approx(np.mean(guess[y == k] == k))  # argmax recall
        assert row.threshold is None
    assert summary.row("macro").auroc.value == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert summary.row("weighted").auroc.value == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="weighted"))
    assert mc.accuracy.value == pytest.approx(accuracy_score(y, guess))
    assert mc.balanced_accuracy.value == pytest.approx(balanced_accuracy_score(y, guess))
    assert mc.confusion.tolist() == confusion_matrix(y, guess).tolist()
    assert [r.name for r in summary.rows] == [*CLASSES, "macro", "weighted"]  # no 'normal'/'micro' rows


def test_intervals_cover_the_estimate_and_are_seeded() -> None:
    y, probs, patients = _data()
    t = np.eye(4, dtype=int)[y]
    a = multiclass_summary(t, probs, CLASSES, patients, n_boot=200, seed=3)
    b = multiclass_summary(t, probs, CLASSES, patients, n_boot=200, seed=3)
    for iv in (a[1].accuracy, a[1].balanced_accuracy, a[0].row("weighted").auroc):
        assert iv.low < iv.value < iv.high and iv.high - iv.low < 0.3
    assert a[1].to_dict() == b[1].to_dict()


def test_weighted_accuracy_equals_repeating_images() -> None:
    y, probs, _ = _data(n=50)
    guess = probs.argmax(1)
    weights = np.random.default_rng(1).integers(0, 3, size=(3, 50))
    for w, acc, bal in zip(weights, accuracy_from_weights(y, guess, weights),
                           balanced_accuracy_from_weights(y, guess, 4, weights), strict=True):
        rows = np.repeat(np.arange(50), w)
        assert acc == pytest.approx(accuracy_score(y[rows], guess[rows]))
        assert bal == pytest.approx(balanced_accuracy_score(y[rows], guess[rows]))


def test_rows_that_are_not_one_hot_are_refused() -> None:
    y, probs, patients = _data(n=20)
    t = np.eye(4, dtype=int)[y]
    t[3] = [1, 1, 0, 0]
    with pytest.raises(DataError, match="exactly one 1 per row"):
        multiclass_summary(t, probs, CLASSES, patients, n_boot=10)
