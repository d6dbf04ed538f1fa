"""Audit figures as PNG (matplotlib Agg, no pyplot state): per subgroup, AUROC and FNR (under-diagnosis) with their
patient-bootstrap intervals, one row of panels per attribute; a group with too few patients is drawn as a bare point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from chestxray.evaluation.disparities import ANY
from chestxray.evaluation.plots import _save

RAW, CONTROLLED, FLAGGED = "#1f77b4", "#7f7f7f", "#d62728"


def headline_task(table: pd.DataFrame) -> str:
    """The task the figure shows: 'any finding' (its FNR is the under-diagnosis rate) when present, else the first."""
    names = list(dict.fromkeys(table["finding"]))
    return ANY if ANY in names else names[0]


def _panel(ax, rows: pd.DataFrame, metric: str, title: str, controlled: str | None = None, alpha: float = 0.05) -> None:
    """Points with interval bars per subgroup (red where this metric's gap is flagged); hollow grey: case-mix
    standardised."""
    y = np.arange(len(rows))[::-1]
    for yi, (_, r) in zip(y, rows.iterrows()):
        colour = FLAGGED if r.get(f"{metric}_p_holm", np.nan) < alpha else RAW
        low, high = r.get(f"{metric}_low"), r.get(f"{metric}_high")
        if pd.notna(low) and pd.notna(high):
            ax.plot([low, high], [yi, yi], color=colour, lw=2)
        if pd.notna(r[metric]):
            ax.plot(r[metric], yi, "o", color=colour, ms=6)
        if controlled and pd.notna(r.get(controlled)):
            ax.plot(r[controlled], yi - 0.22, "o", mfc="none", mec=CONTROLLED, ms=6)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{g} (n={n})" for g, n in zip(rows["subgroup"], rows["images"])], fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def plot_subgroups(table: pd.DataFrame, out: str | Path, alpha: float = 0.05) -> Path:
    """One row per attribute: AUROC and FNR (the under-diagnosis rate for 'any finding') of the headline task per
    subgroup with 95 % patient-bootstrap intervals; red where a Holm-adjusted test flags the group."""
    task = headline_task(table)
    rows = table[table["finding"] == task]
    attributes = list(dict.fromkeys(rows["attribute"]))
    heights = [max(1.2, 0.35 * (rows["attribute"] == a).sum() + 0.8) for a in attributes]
    fig = Figure(figsize=(9, sum(heights) + 0.6))
    axes = fig.subplots(len(attributes), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    fnr_name = "under-diagnosis rate" if task == ANY else f"FNR ({task})"
    for (left, right), attr in zip(axes, attributes):
        part = rows[rows["attribute"] == attr]
        _panel(left, part, "auroc", f"{attr}: AUROC ({task})", alpha=alpha)
        left.axvline(0.5, color="k", lw=0.6, ls=":")
        _panel(right, part, "fnr", f"{attr}: {fnr_name}", "pc_underdiagnosis" if task == ANY else None, alpha)
    fig.suptitle("Subgroups on the evaluated split (95 % patient-bootstrap intervals; red: flagged after Holm; "
                 "hollow: standardised to the split's case mix)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, out)
