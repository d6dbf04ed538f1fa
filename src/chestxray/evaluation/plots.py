"""Evaluation plots written as PNG files (matplotlib, Agg canvas; no pyplot global state).

Each function takes arrays or frames, draws one figure, writes it atomically to `out` and returns the path.
Undefined metrics (a finding with no positives) are drawn as an 'n/a' panel with the reason.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from chestxray.evaluation.metrics import (
    NOT_ANNOTATED,
    Summary,
    annotated,
    calibration_bins,
    check_with_missing,
    threshold_counts,
    undefined_reason,
)
from chestxray.files import atomic_path

DPI = 100
MAX_COLS = 7  # a 14-finding task is drawn as a 2 x 7 grid


def _save(fig: Figure, out: str | Path) -> Path:
    """Render the figure to PNG at `out` (atomically)."""
    out = Path(out)
    FigureCanvasAgg(fig)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def _grid(n: int, panel: float = 2.4, gap: float = 0.8) -> tuple[Figure, list]:
    """A figure with n square panels, at most MAX_COLS a row, `gap` inches between rows (titles, x labels)."""
    cols = min(MAX_COLS, max(n, 1))
    panel = panel if n > 3 else panel * 1.5
    rows = math.ceil(max(n, 1) / cols)
    height = rows * panel + (rows - 1) * gap + 0.9
    fig = Figure(figsize=(panel * cols, height))
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.subplots_adjust(left=0.45 / (panel * cols), right=1 - 0.2 / (panel * cols), bottom=0.45 / height, top=1 - 0.45 / height,
                        wspace=0.35, hspace=gap / panel)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _na(ax, title: str, reason: str) -> None:
    """Draw an 'n/a' panel stating why the metric is undefined."""
    ax.set_title(title, fontsize=9)
    text = "\n".join(["n/a", *textwrap.wrap(reason, 18)])
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _unit_axes(ax, xlabel: str, ylabel: str) -> None:
    """Square [0, 1] curve panel with small ticks and labels (shared by the ROC and PR grids)."""
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.tick_params(labelsize=7)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)


def plot_history(history: pd.DataFrame, out: str | Path) -> Path:
    """Training and validation loss, and validation AUROC, against step; the best-AUROC step is starred.

    `history` has the RUN/metrics.csv columns: step, epoch, train_loss, val_loss, val_auroc, lr (NaN where not logged).
    """
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_loss, ax_auc = fig.subplots(1, 2)
    h = history.sort_values("step") if "step" in history else history
    for col, style in (("train_loss", "-"), ("val_loss", "o-")):
        if col in h and h[col].notna().any():
            part = h[["step", col]].dropna()
            ax_loss.plot(part["step"], part[col], style, ms=3, lw=1.2, label=col.replace("_", " "))
    if "val_auroc" in h and h["val_auroc"].notna().any():
        part = h[["step", "val_auroc"]].dropna()
        ax_auc.plot(part["step"], part["val_auroc"], "o-", ms=3, lw=1.2, color="tab:green", label="val AUROC")
        best = part.loc[part["val_auroc"].idxmax()]
        ax_auc.plot(best["step"], best["val_auroc"], "*", ms=16, color="tab:red",
                    label=f"best {best['val_auroc']:.3f} @ step {int(best['step'])}")
        if "val_loss" in h:
            at = h.loc[(h["step"] == best["step"]) & h["val_loss"].notna(), "val_loss"]
            if len(at):
                ax_loss.plot(best["step"], at.iloc[0], "*", ms=16, color="tab:red", label="best AUROC step")
    else:
        ax_auc.text(0.5, 0.5, "no validation AUROC logged", ha="center", va="center", transform=ax_auc.transAxes)
    ax_loss.set(title="Loss", xlabel="step", ylabel="loss (BCE; cross-entropy for multi-class)")
    ax_auc.set(title="Validation AUROC (macro)", xlabel="step", ylabel="AUROC")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, out)


def plot_roc_grid(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], out: str | Path,
                  thresholds: dict[str, float] | None = None) -> Path:
    """One ROC panel per finding with its AUROC and the operating point at the chosen threshold (images where the
    finding is missing, NaN, left out)."""
    full_t, full_s = check_with_missing(y_true, y_score)
    fig, axes = _grid(len(labels))
    for j, (ax, name) in enumerate(zip(axes, labels)):
        y, score, _ = annotated(full_t, full_s, j)
        reason = undefined_reason(y) if len(y) else NOT_ANNOTATED
        if reason:
            _na(ax, name, reason)
            continue
        fpr, tpr, _ = roc_curve(y, score)
        area = float(auc(fpr, tpr))
        ax.plot(fpr, tpr, lw=1.4, color="tab:blue")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        if thresholds and name in thresholds:
            c = threshold_counts(y, score, thresholds[name])
            ax.plot(1 - (c.specificity or 0.0), c.sensitivity or 0.0, "o", color="tab:red", ms=6, clip_on=False,
                    zorder=3, label=f"t={thresholds[name]:.2f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{name}\nAUROC {area:.3f}", fontsize=9)
        _unit_axes(ax, "1 - specificity", "sensitivity")
    return _save(fig, out)


def pr_steps(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) to draw with drawstyle 'steps-pre': recall ascending from 0, the first step at the precision
    of the highest threshold — where the data starts — without scikit-learn's appended (recall 0, precision 1) point.

    Precision[i] holds on (recall[i-1], recall[i]], so the area under the drawn steps is the average precision.
    """
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    precision, recall = precision[:-1][::-1], recall[:-1][::-1]  # drop the artificial end point; ascending recall
    return np.r_[0.0, recall], np.r_[precision[0], precision]


def plot_pr_grid(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], out: str | Path,
                 thresholds: dict[str, float] | None = None) -> Path:
    """One precision-recall panel per finding (pr_steps: starting where the data does), with the prevalence (chance)
    line and the operating point (images where the finding is missing, NaN, left out)."""
    full_t, full_s = check_with_missing(y_true, y_score)
    fig, axes = _grid(len(labels))
    for j, (ax, name) in enumerate(zip(axes, labels)):
        y, score, _ = annotated(full_t, full_s, j)
        if y.sum() == 0:
            _na(ax, name, f"no positives among {len(y)} images" if len(y) else NOT_ANNOTATED)
            continue
        recall, precision = pr_steps(y, score)
        ax.plot(recall, precision, drawstyle="steps-pre", lw=1.4, color="tab:purple")
        ax.axhline(y.mean(), ls="--", lw=0.8, color="grey")
        if thresholds and name in thresholds:
            c = threshold_counts(y, score, thresholds[name])
            if c.precision is not None:
                ax.plot(c.sensitivity or 0.0, c.precision, "o", color="tab:red", ms=6, clip_on=False, zorder=3)
        ax.set_title(name, fontsize=9)
        _unit_axes(ax, "recall", "precision")
    return _save(fig, out)


def plot_confusion_grid(summary: Summary, out: str | Path) -> Path:
    """A 2x2 confusion matrix (counts and row share) per finding at its threshold, plus 'normal' when present."""
    rows = [r for r in summary.rows if r.kind in ("finding", "normal") and r.counts is not None]
    fig, axes = _grid(len(rows), panel=2.0, gap=0.5)
    for ax, r in zip(axes, rows):
        c = r.counts
        mat = np.array([[c.tn, c.fp], [c.fn, c.tp]], dtype=float)
        share = mat / np.maximum(mat.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, k), v in np.ndenumerate(mat):
            ax.text(k, i, f"{int(v)}\n{share[i, k]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, k] > 0.6 else "black")
        thr = f" (t={r.threshold:.2f})" if r.threshold is not None else ""
        ax.set_title(f"{r.name}{thr}", fontsize=8)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=7)
        ax.set_yticks([0, 1], ["true 0", "true 1"], fontsize=7)
    if not rows:
        _na(fig.subplots(), "confusion", "no thresholds")
    return _save(fig, out)


def plot_auroc_bars(summary: Summary, out: str | Path) -> Path:
    """AUROC per finding (and macro, macro_eligible, normal) with 95% bootstrap CI bars (none where the minimum-
    sample rule withholds the interval); n/a findings are listed, not drawn."""
    rows = [r for r in summary.rows if r.kind in ("finding", "macro", "macro_eligible", "weighted", "normal")]
    shown = [r for r in rows if r.auroc.value is not None]
    missing = [r.name for r in rows if r.auroc.value is None]
    fig = Figure(figsize=(8, 0.32 * max(len(shown), 1) + 1.4), layout="constrained")
    ax = fig.subplots()
    shown = sorted(shown, key=lambda r: (r.kind != "finding", r.auroc.value))
    ys = np.arange(len(shown))
    vals = np.array([r.auroc.value for r in shown], dtype=float)
    lo = np.array([r.auroc.low if r.auroc.low is not None else r.auroc.value for r in shown], dtype=float)
    hi = np.array([r.auroc.high if r.auroc.high is not None else r.auroc.value for r in shown], dtype=float)
    colors = ["tab:blue" if r.kind == "finding" else "tab:orange" for r in shown]
    ax.barh(ys, vals, color=colors, alpha=0.8)
    # a percentile interval of few replicates may miss the point estimate: draw no whisker on that side then
    ax.errorbar(vals, ys, xerr=[np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_yticks(ys, [r.name for r in shown], fontsize=8)
    ax.axvline(0.5, ls="--", color="grey", lw=0.8)
    ax.set(xlim=(0, 1), xlabel=f"AUROC ({summary.ci:.0%} patient-bootstrap CI, {summary.n_boot} replicates)")
    if missing:
        ax.set_title("\n".join(textwrap.wrap("n/a (no positives or negatives): " + ", ".join(missing), 110)), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


def plot_calibration(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], out: str | Path,
                     n_bins: int = 10, min_count: int = 10, max_lines: int = 6, title: str = "Reliability") -> Path:
    """Reliability diagram and the histogram of probabilities.

    Bold: all findings pooled, each point annotated with its bin's count. With up to `max_lines` findings each has
    its own labelled line (name and ECE), drawn only through bins holding at least `min_count` images, so a bin of one
    image does not jump to 0 or 1; with more findings only the pooled curve is drawn (per-finding ECE is in metrics).
    """
    full_t, full_s = check_with_missing(y_true, y_score)
    given = ~np.isnan(full_t)
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_rel, ax_hist = fig.subplots(1, 2)
    ax_rel.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect")
    if 1 < len(labels) <= max_lines:
        for j, name in enumerate(labels):
            y, score, _ = annotated(full_t, full_s, j)
            if not len(y):
                continue
            b = calibration_bins(y, score, n_bins)
            ok = b.counts >= min_count
            ax_rel.plot(b.mean_prob[ok], b.frac_pos[ok], ".-", lw=1, alpha=0.7, label=f"{name} (ECE {b.ece:.3f})")
    s = full_s[given]  # annotated (image, finding) pairs
    pooled = calibration_bins(full_t[given], s, n_bins)
    ok = pooled.counts > 0
    ax_rel.plot(pooled.mean_prob[ok], pooled.frac_pos[ok], "o-", lw=2, color="tab:red",
                label=f"{'all findings pooled' if len(labels) > 1 else labels[0]} (ECE {pooled.ece:.3f})")
    for x, y, n in zip(pooled.mean_prob[ok], pooled.frac_pos[ok], pooled.counts[ok]):
        ax_rel.annotate(f"n={int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6, color="tab:red")
    note = f" (per-finding lines: bins with >= {min_count} images)" if 1 < len(labels) <= max_lines else ""
    ax_rel.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed positive rate",
               title=f"{title}{note}", aspect="equal")
    ax_rel.title.set_fontsize(9)
    ax_rel.legend(fontsize=7, loc="upper left")
    ax_rel.grid(alpha=0.3)
    ax_hist.hist(s.ravel(), bins=pooled.edges, color="tab:gray")
    ax_hist.set(xlabel="predicted probability", ylabel="image-finding pairs", title="Predicted probabilities")
    ax_hist.set_yscale("log")
    return _save(fig, out)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], out: str | Path) -> Path:
    """K x K confusion matrix of a multi-class task (rows true, columns argmax-predicted): counts and row shares."""
    mat = np.asarray(matrix, dtype=float)
    share = mat / np.maximum(mat.sum(1, keepdims=True), 1)
    side = 1.2 + 0.9 * len(classes)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, k), v in np.ndenumerate(mat):
        ax.text(k, i, f"{int(v)}\n{share[i, k]:.0%}", ha="center", va="center", fontsize=8,
                color="white" if share[i, k] > 0.6 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, list(classes), fontsize=8, rotation=30, ha="right")
    ax.set_yticks(ticks, list(classes), fontsize=8)
    ax.set(xlabel="predicted class (argmax; no thresholds)", ylabel="true class")
    ax.set_title(f"accuracy {np.trace(mat) / max(mat.sum(), 1):.3f} ({int(np.trace(mat))} of {int(mat.sum())})",
                 fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    return _save(fig, out)


def plot_source_matrix(frame: pd.DataFrame, sources: Sequence[str], finding: str, out: str | Path) -> Path:
    """The cross-dataset matrix of one finding: rows the training sources, columns the test sources (and the pooled
    test split), colour the AUROC, text the AUROC with its 95% patient-bootstrap CI or 'too few' where the
    minimum-sample rule withholds it; grey where undefined."""
    values = np.array([[float(r.get(f"{s} auroc")) if r.get(f"{s} auroc") is not None else np.nan
                        for s in sources] for r in frame.to_dict("records")], dtype=float)
    fig = Figure(figsize=(1.9 * len(sources) + 1.6, 0.75 * len(frame) + 1.4), layout="constrained")
    ax = fig.subplots()
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap="RdYlGn", vmin=0.3, vmax=1.0, aspect="auto")
    for i, r in enumerate(frame.to_dict("records")):
        for k, s in enumerate(sources):
            v = r.get(f"{s} auroc")
            if v is None or not np.isfinite(float(v)):
                ax.text(k, i, "n/a", ha="center", va="center", fontsize=8, color="grey")
                continue
            low = r.get(f"{s} low")
            ci = (f"{float(low):.2f}–{float(r[f'{s} high']):.2f}" if low is not None and np.isfinite(float(low))
                  else f"too few ({int(r[f'{s} positive_patients'])}+/{int(r[f'{s} negative_patients'])}-)")
            ax.text(k, i, f"{float(v):.3f}\n{ci}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(sources)), [f"test: {s}" for s in sources], fontsize=8)
    ax.set_yticks(range(len(frame)), [f"train: {t}" for t in frame["trained_on"]], fontsize=8)
    ax.set_title(f"{finding}: AUROC (95% patient-bootstrap CI; 'too few': positive/negative patients under the "
                 "minimum-sample rule)", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="AUROC")
    return _save(fig, out)
