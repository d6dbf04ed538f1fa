"""The study report: one self-contained HTML page (inline CSS, base64 PNGs) with the group table, overlaid ROC
curves of the selected runs, overlaid training curves (loss, validation AUROC, accuracy per epoch), the paired
comparisons in plain words, and links to every run's own report (written beside each run if missing)."""

from __future__ import annotations

import datetime as _dt
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from sklearn.metrics import roc_curve

import chestxray
from chestxray.errors import DataError
from chestxray.files import png_data_url, read_csv, write_text
from chestxray.inference.outputs import log_odds_matrix

log = logging.getLogger(__name__)

REPORT = "study.html"


def _png(fig: Any) -> str:
    """A matplotlib figure as a base64 data URI (and closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png_data_url(buf.getvalue())


def _roc_points(run_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """ROC of a run's test predictions: the finding for a binary task, all findings pooled (micro) otherwise."""
    import json

    meta = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
    labels = list(meta["labels"])
    pred = read_csv(run_dir / "eval" / "predictions.csv")
    y = pred[labels].to_numpy(dtype=float).ravel("F")
    s = log_odds_matrix(pred, labels).ravel("F")  # log-odds rank without the ties of saturated probabilities
    keep = ~np.isnan(y)  # a merged dataset: pairs a source does not annotate are left out
    fpr, tpr, _ = roc_curve(y[keep], s[keep])
    return fpr, tpr, labels[0] if len(labels) == 1 else "micro (all findings pooled)"


def roc_axes(chosen: pd.DataFrame, title: str = "test ROC") -> Any:
    """The figure of overlaid ROC curves, one per selected run (or pool), with the legend BELOW the axes so that
    it never covers a curve, however many groups there are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 5))
    what = ""
    for group, row in chosen.iterrows():
        fpr, tpr, what = _roc_points(Path(row["run_dir"]))
        ax.plot(fpr, tpr, lw=1.6, label=f"{group} ({row['run']}): AUROC {row['test_auroc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}, {what}", xlim=(0, 1),
           ylim=(0, 1.01), aspect="equal")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    return fig


def roc_figure(chosen: pd.DataFrame, title: str = "test ROC") -> str:
    """Overlaid test ROC curves of the selected run of each group (legend under the plot)."""
    return _png(roc_axes(chosen, title))


def curves_figure(chosen: pd.DataFrame) -> str:
    """Overlaid training curves of the selected runs: loss (train solid, val dashed), val AUROC, accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for k, (group, row) in enumerate(chosen.iterrows()):
        h = pd.read_csv(Path(row.get("curves_dir", row["run_dir"])) / "history.csv")
        color = f"C{k % 10}"
        axes[0].plot(h["epoch"], h["train_loss"], c=color, label=f"{group} train")
        axes[0].plot(h["epoch"], h["val_loss"], c=color, ls="--", label=f"{group} val")
        axes[1].plot(h["epoch"], h["val_auroc"], c=color, marker="o", ms=3, label=group)
        if "train_accuracy" in h:
            axes[2].plot(h["epoch"], h["train_accuracy"], c=color, label=f"{group} train")
            axes[2].plot(h["epoch"], h["val_accuracy"], c=color, ls="--", label=f"{group} val")
    for ax, title in zip(axes, ("loss", "validation AUROC", "accuracy (at 0.5; mean over labels)")):
        ax.set(xlabel="epoch", title=title)
        ax.legend(fontsize=6)
    return _png(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer() and digits == 0):
        return f"{int(value):,}"
    return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)


def _note(value: Any) -> str:
    """A note cell's text ('' for a missing value, which pandas reads back as NaN)."""
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else str(value)


def _ci(group: dict[str, Any]) -> str:
    """'[0.612, 0.701]', or 'no CI: too few patients' where the minimum-sample rule withheld it."""
    low, high = group["selected_test_low"], group["selected_test_high"]
    if _fmt(low) == "n/a" or _fmt(high) == "n/a":
        return "no CI: too few patients" if _note(group.get("selected_test_note")) else "n/a"
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _matrices(out: Path) -> list[dict[str, Any]]:
    """The cross-dataset matrices the study wrote (chestxray.workflows.cross_source), for the page."""
    found = []
    for path in sorted(out.glob("study_cross_source_*.csv")):
        frame = read_csv(path)
        columns = [c for c in frame.columns if c not in ("trained_on", "run") and f"{c} auroc" in frame.columns]
        png = path.with_suffix(".png")
        found.append({"finding": path.stem[len("study_cross_source_"):], "columns": columns,
                      "rows": [{"trained_on": r["trained_on"], "cells": [_note(r.get(c)) for c in columns]}
                               for r in frame.to_dict("records")],
                      "png": png_data_url(png)
                      if png.is_file() else ""})
    return found


def write_study_report(out: str | Path, runs: pd.DataFrame, groups: pd.DataFrame, chosen: pd.DataFrame,
                       comparisons: pd.DataFrame, select: str, folds: int = 0) -> Path:
    """Write DIR/study.html from the study's tables (and each run's report.html when missing); `folds` >= 2: a
    k-fold study (chestxray.workflows.crossval), whose 'selected' rows are the pooled out-of-fold estimates."""
    from chestxray.report.run_report import write_report

    out = Path(out)
    if runs.empty:
        raise DataError(f"{out}: the study has no finished runs to report")
    for run_dir in runs["run_dir"]:
        if not (Path(run_dir) / "report.html").is_file():
            write_report(run_dir)
    group_rows = [{
        "group": g["group"], "runs": int(g["runs"]),
        "val": f"{_fmt(g['val_auroc_mean'])} ± {_fmt(g['val_auroc_sd'])}",
        "test": f"{_fmt(g['test_auroc_mean'])} ± {_fmt(g['test_auroc_sd'])}",
        "selected": g["selected_run"], "selected_test": _fmt(g["selected_test_auroc"]),
        "ci": _ci(g),
        "ci_note": _note(g.get("selected_test_note")),
        "sens": _fmt(g["sensitivity"]), "spec": _fmt(g["specificity"]), "fn": _fmt(g["fn"], 0),
        "fp": _fmt(g["fp"], 0), "seconds": _fmt(g["train_seconds_mean"], 1), "params": _fmt(g["parameters"], 0),
        "ips": _fmt(g["images_per_s_mean"], 1),
        "fold": (f"{_fmt(g['fold_auroc_mean'])} ± {_fmt(g['fold_auroc_sd'])}" if folds else ""),
    } for g in groups.to_dict("records")]
    run_rows = [{"run": r["run"], "group": r["group"], "seed": r["seed"],
                 "fold": _fmt(r["fold"], 0) if folds and "fold" in r else "", "val_auroc": _fmt(r["val_auroc"]),
                 "val_loss": _fmt(r["val_loss"]), "test_auroc": _fmt(r["test_auroc"]),
                 "selected": r["run"] in set(chosen["run"]),
                 "link": Path(r["run_dir"]).resolve().relative_to(out.resolve()).as_posix() + "/report.html"
                 if Path(r["run_dir"]).resolve().is_relative_to(out.resolve()) else
                 Path(r["run_dir"]).resolve().as_uri() + "/report.html"}
                for r in runs.to_dict("records")]
    env = Environment(loader=PackageLoader("chestxray.report", "templates"), autoescape=select_autoescape(["j2"]))
    html = env.get_template("study.html.j2").render(
        title=f"Study {out.resolve().name}", version=chestxray.__version__,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        select=select, groups=group_rows, runs=run_rows, folds=folds,
        comparisons=comparisons.to_dict("records") if not comparisons.empty else [],
        method=comparisons["method"].iloc[0] if not comparisons.empty else "",
        family=comparisons["family"].iloc[0] if "family" in comparisons else "",
        roc=roc_figure(chosen, "pooled out-of-fold ROC" if folds else "test ROC"), curves=curves_figure(chosen),
        matrices=_matrices(out),
    )
    target = out / REPORT
    write_text(target, html)
    log.info("wrote %s", target)
    return target
