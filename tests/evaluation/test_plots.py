"""Evaluation plots: PR curves start where the data does; the reliability plot is labelled and counts its bins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import chestxray.evaluation.plots as plots
from chestxray.evaluation.plots import plot_calibration, plot_pr_grid, pr_steps


def test_pr_curve_starts_at_the_data_not_at_precision_one() -> None:
    # the top-scored image is a negative: at recall 0 the precision is 0, not scikit-learn's appended 1.0
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.5, 0.5, 0.2])
    recall, precision = pr_steps(y, s)
    assert (recall[0], precision[0]) == (0.0, 0.0)
    assert recall[-1] == 1.0 and (np.diff(recall) >= 0).all()
    # the drawn steps enclose exactly the average precision (AUPRC as reported)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(average_precision_score(y, s))
    # a rare finding with a weak score never reaches precision 1.0 anywhere on the curve
    rng = np.random.default_rng(0)
    rare = (rng.random(400) < 0.07).astype(int)
    _, weak = pr_steps(rare, rng.random(400))
    assert weak.max() < 1.0


def _capture(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or Path(out))
    return figures


def test_pr_grid_draws_the_steps(tmp_path: Path, monkeypatch) -> None:
    figures = _capture(monkeypatch)
    y = np.array([[0], [1], [0], [1]])
    s = np.array([[0.9], [0.8], [0.3], [0.2]])
    plot_pr_grid(y, s, ["Mass"], tmp_path / "pr.png")
    line = figures[0].axes[0].lines[0]
    assert line.get_drawstyle() == "steps-pre"
    assert (line.get_xdata()[0], line.get_ydata()[0]) == (0.0, 0.0)


def test_reliability_plot_labels_findings_and_counts_bins(tmp_path: Path, monkeypatch) -> None:
    figures = _capture(monkeypatch)
    rng = np.random.default_rng(1)
    s = rng.random((300, 2))
    y = (rng.random((300, 2)) < s).astype(int)
    s[0, 0], y[0, 0] = 0.999, 1  # keep bin (0.9, 1] full, the lone outlier cannot make a jump of its own
    plot_calibration(y, s, ["Mass", "Nodule"], tmp_path / "cal.png")
    ax = figures[0].axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(n.startswith("Mass (ECE") for n in names) and any(n.startswith("Nodule (ECE") for n in names)
    counts = [int(t.get_text()[2:]) for t in ax.texts if t.get_text().startswith("n=")]
    assert sum(counts) == y.size  # every image-finding pair is in one annotated bin
    # per-finding lines skip bins with fewer than 10 images: one sparse bin cannot jump to 0 or 1
    sparse = np.full((30, 2), 0.05)
    sparse[0] = 0.95
    plot_calibration(np.zeros((30, 2), int) + np.eye(30, 2, dtype=int), sparse, ["A", "B"], tmp_path / "c2.png")
    lines = {line.get_label().split(" ")[0]: line for line in figures[1].axes[0].lines}
    assert list(lines["A"].get_xdata()) == pytest.approx([0.05])
    # many findings: only the pooled curve, no unlabelled tangle
    plot_calibration((rng.random((50, 14)) < 0.2).astype(int), rng.random((50, 14)), [f"f{i}" for i in range(14)],
                     tmp_path / "c3.png")
    assert len(figures[2].axes[0].lines) == 2  # the diagonal and the pooled curve
