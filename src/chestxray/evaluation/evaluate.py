"""Honest evaluation of a run: thresholds from the validation split, metrics with patient-bootstrap CIs on the
evaluated split, and every table and plot written into RUN/eval/.

RUN/eval/ holds predictions.csv, val_predictions.csv, roc/<finding>.csv (fpr, tpr, threshold), metrics.json,
summary.csv, copies of the training history (training_metrics.csv from RUN/metrics.csv, per step;
training_history.csv from RUN/history.csv, per epoch) and the PNG plots named in PLOTS.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from chestxray.errors import ConfigError, DataError
from chestxray.evaluation import plots
from chestxray.evaluation.metrics import Summary, summarize, undefined_reason
from chestxray.evaluation.thresholds import parse_method, thresholds_from_frame
from chestxray.files import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
PLOTS = {
    "history": "history.png",
    "roc": "roc_curves.png",
    "pr": "pr_curves.png",
    "confusion": "confusion.png",
    "auroc": "auroc_ci.png",
    "calibration": "calibration.png",
}


@dataclass
class EvalResult:
    """What an evaluation produced: where, on which split, the thresholds used and the metric summary."""

    eval_dir: Path
    split: str
    labels: list[str]
    thresholds: dict[str, float]
    threshold_method: str
    tta: str
    summary: Summary
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def macro_auroc(self) -> float | None:
        """Macro AUROC over findings where it is defined (the single finding's AUROC for a binary task)."""
        rows = [r for r in self.summary.rows if r.kind == "macro"] or self.summary.rows[:1]
        return rows[0].auroc.value


def _copy(src: str | Path, dst: Path) -> None:
    """Copy a file into the eval folder atomically (no half copy is ever seen)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _check_frame(frame: pd.DataFrame, labels: Sequence[str], what: str) -> None:
    """Raise a DataError when a predictions frame lacks a needed column or has no rows."""
    need = ["image_id", "patient_id", *labels, *(f"p_{x}" for x in labels)]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DataError(f"{what} predictions lack column(s) {missing}; expected image_id, patient_id, labels and p_<label>")
    if frame.empty:
        raise DataError(f"{what} split has no images; it cannot be evaluated")


def roc_table(y_true: np.ndarray, y_score: np.ndarray) -> pd.DataFrame:
    """fpr, tpr, threshold of one finding's ROC curve (empty when it has no positives or no negatives)."""
    if undefined_reason(y_true) is not None:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    fpr, tpr, thr = roc_curve(y_true, y_score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def evaluate_predictions(
    val: pd.DataFrame,
    scored: pd.DataFrame,
    labels: Sequence[str],
    out_dir: str | Path,
    split: str = "test",
    threshold_method: str = "youden",
    tta: str = "none",
    history: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> EvalResult:
    """Choose thresholds on `val`, apply them to `scored` (the evaluated split) and write every output to out_dir.

    Only validation labels reach the threshold choice; the evaluated split's labels are used for metrics only.
    """
    labels = list(labels)
    method = parse_method(threshold_method)
    _check_frame(val, labels, "validation")
    _check_frame(scored, labels, split)
    if split == "val":
        log.warning("evaluating on the validation split, where the thresholds were chosen: metrics are optimistic")
    thresholds = thresholds_from_frame(val, labels, method)
    y_true = scored[labels].to_numpy()
    y_score = scored[[f"p_{x}" for x in labels]].to_numpy()
    summary = summarize(y_true, y_score, labels, scored["patient_id"].astype(str).tolist(), thresholds,
                        n_boot=n_boot, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "predictions.csv", scored)
    write_csv(out / "val_predictions.csv", val)
    for j, name in enumerate(labels):
        write_csv(out / "roc" / f"{name}.csv", roc_table(y_true[:, j], y_score[:, j]))
    write_csv(out / "summary.csv", summary.to_frame())
    write_json(out / "metrics.json", {
        "split": split,
        "labels": labels,
        "threshold_method": f"{method} on val",
        "thresholds": thresholds,
        "tta": tta,
        "n_val_images": len(val),
        "evaluated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
        **summary.to_dict(),
    })
    made = {
        "roc": plots.plot_roc_grid(y_true, y_score, labels, out / PLOTS["roc"], thresholds),
        "pr": plots.plot_pr_grid(y_true, y_score, labels, out / PLOTS["pr"], thresholds),
        "confusion": plots.plot_confusion_grid(summary, out / PLOTS["confusion"]),
        "auroc": plots.plot_auroc_bars(summary, out / PLOTS["auroc"]),
        "calibration": plots.plot_calibration(y_true, y_score, labels, out / PLOTS["calibration"]),
    }
    if history is not None and Path(history).exists():
        _copy(history, out / "training_metrics.csv")
        made["history"] = plots.plot_history(pd.read_csv(history), out / PLOTS["history"])
    elif history is not None:
        log.warning("no training history at %s; the loss/AUROC plot is skipped", history)
    return EvalResult(out, split, labels, thresholds, f"{method} on val", tta, summary, made)


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    tta: str = "none",
    threshold_method: str = "youden",
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    prepared: str | Path | None = None,
    num_workers: int = 0,
    device: str | None = None,
) -> EvalResult:
    """Predict val and `split` with RUN/bundle, choose thresholds on val, store them in the card, write RUN/eval/.

    `prepared` defaults to the folder recorded in the bundle card.
    """
    from chestxray.evaluation.thresholds import store_thresholds
    from chestxray.inference.predict import TTA_MODES, predict_split
    from chestxray.models.bundle import load_bundle, update_card

    method = parse_method(threshold_method)  # fail fast on bad options, before loading anything
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}; expected one of {TTA_MODES}")
    run = Path(run_dir)
    if not (run / "bundle").is_dir():
        raise DataError(f"{run}: no bundle/ folder; is this a training run folder (chestxray train ... writes one)?")
    bundle = load_bundle(run / "bundle")
    labels = list(bundle.labels)
    kwargs = dict(batch_size=batch_size, tta=tta, num_workers=num_workers, device=device)
    val = predict_split(bundle, prepared, "val", **kwargs)
    scored = val if split == "val" else predict_split(bundle, prepared, split, **kwargs)
    extra = {"run": str(run), "bundle": str(bundle.path), "prepared": str(prepared or bundle.card.get("prepared")),
             "data_fingerprint": bundle.card.get("data_fingerprint")}
    result = evaluate_predictions(val, scored, labels, run / EVAL_DIR, split, method, tta, run / "metrics.csv",
                                  n_boot, seed, extra)
    if (run / "history.csv").exists():
        _copy(run / "history.csv", result.eval_dir / "training_history.csv")
    store_thresholds(bundle.path, result.thresholds, method, tta)
    headline = {r.name: r.auroc.value for r in result.summary.rows}
    update_card(bundle.path, metrics={"split": split, "tta": tta, "macro_auroc": result.macro_auroc, "auroc": headline})
    log.info("evaluated %s on %s: macro AUROC %s", run, split, result.macro_auroc)
    return result
