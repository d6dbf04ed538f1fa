"""The study report's ROC figure keeps its legend under the axes, so no curve is hidden however many groups there
are (issue 23: the legend covered the curves). Drawn from tiny synthetic evaluated runs; no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.report.study_report import roc_axes


def _run(root: Path, name: str, seed: int) -> Path:
    """A run folder with just what the ROC reads: eval/metrics.json (labels) and eval/predictions.csv."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    (root / name / "eval").mkdir(parents=True)
    (root / name / "eval" / "metrics.json").write_text(json.dumps({"labels": ["Pneumonia"]}))
    pd.DataFrame({"Pneumonia": y, "p_Pneumonia": np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)}).to_csv(
        root / name / "eval" / "predictions.csv", index=False)
    return root / name


def test_roc_legend_lies_under_the_axes(tmp_path: Path) -> None:
    groups = [f"model=resnet18,recipe=group-with-a-long-name-{k}" for k in range(6)]
    chosen = pd.DataFrame({"run": [f"r{k}" for k in range(6)], "test_auroc": 0.8,
                           "run_dir": [str(_run(tmp_path, f"r{k}", k)) for k in range(6)]}, index=groups)
    fig = roc_axes(chosen)
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes_box = ax.get_window_extent(renderer)
    assert len(ax.get_legend().get_texts()) == 6 and len(ax.lines) == 7  # six curves and the chance line
    assert legend.y1 < axes_box.y0, (legend, axes_box)  # wholly below the plotting area: it covers no curve
    assert legend.y1 < ax.xaxis.get_tightbbox(renderer).y0 + 1  # and below the x-axis label
