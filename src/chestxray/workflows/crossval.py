"""k-fold cross-validation by patient in a study (`chestxray study … --folds K`).

Every grid combination and seed is trained once per fold (run `<name>_fold<i>` on OUT/folds/fold<i>, made by
chestxray.data.folds: fold i is that run's test split, validation is carved from the other folds) and evaluated on
its held-out fold with thresholds from its own validation split. Two estimates per group, both in
study_groups.csv:

- per fold: each fold model's test AUROC (study_runs.csv, one row per fold, with its own interval where the fold
  passes the minimum-sample rule), summarised as mean ± sd over the folds. The sd is the spread of the fold models,
  not a confidence interval: the folds share training patients, and no unbiased estimator of the variance of a
  k-fold mean exists (Bengio & Grandvalet, JMLR 2004).
- pooled out of fold (the headline, `selected_test_auroc`): the K held-out folds' predictions put together, so every
  patient is scored exactly once by a model that never saw it, and the AUROC with its patient-bootstrap interval is
  computed over all N patients at once (chestxray.evaluation.metrics.summarize: the same bootstrap and minimum-sample
  rule as every evaluation). It is the headline because a small collection is why one runs k-fold: a fold holds N/K
  patients, often too few positives for an interval, while the pool holds all of them. Its caveat: it mixes K models'
  score scales, which tends to pull it below the fold mean when the fold models are calibrated differently (Forman &
  Scholz, SIGKDD Explorations 2010); a pooled AUROC well below the fold mean says so. The interval covers which
  patients were sampled for testing, not the variation from training on another sample.
  Sensitivity, specificity, FN and FP are pooled the same way: each fold decides at its own validation thresholds and
  the confusion counts are summed over the folds.

With several seeds, one seed per group is selected on validation only (its mean over the folds of val_auroc or
val_loss), and that seed's pooled predictions are compared between groups with the same paired test as a study
without folds (chestxray.evaluation.compare_runs: the pools hold the same images). The pooled predictions are written
as OUT/pooled/<group>_seed<S>/eval/ (predictions.csv with a fold column, metrics.json, summary.csv), which
`chestxray compare-runs` reads like an evaluated run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import DataError
from chestxray.files import read_csv, write_csv, write_json

log = logging.getLogger(__name__)

FOLDS_DIR = "folds"
POOLED_DIR = "pooled"
POOLED_SPLIT = "out-of-fold"
ESTIMATE = ("pooled out-of-fold: every patient scored once by the fold model that never saw it; patient-bootstrap "
            "interval under the minimum-sample rule")


def expand_folds(study: Any, k: int, seed: int = 0) -> Any:
    """The study with every run repeated per fold: `<name>_fold<i>`, trained on OUT/folds/fold<i>, same group."""
    from chestxray.data.folds import check_folds, fold_folders

    k = check_folds(k)
    folders = fold_folders(study.out / FOLDS_DIR, k)
    runs = []
    for run in study.runs:
        for i, folder in enumerate(folders):
            name = f"{run.name}_fold{i}"
            config = replace(run.config, prepared=str(folder), out=str(study.out / "runs" / name))
            runs.append(replace(run, name=name, config=config, fold=i))
    return replace(study, runs=runs, folds=k, fold_seed=int(seed))


def make_study_folds(study: Any) -> list[Path]:
    """Write (or reuse) the study's fold folders from the PREPARED folder it was given."""
    from chestxray.data.folds import make_folds

    return make_folds(study.prepared, study.out / FOLDS_DIR, study.folds, study.fold_seed)


def _eval(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """A fold run's test predictions, metrics.json and summary.csv."""
    folder = Path(run_dir) / "eval"
    frame = read_csv(folder / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    meta = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return frame, meta, read_csv(folder / "summary.csv")


def pooled_counts(summaries: list[pd.DataFrame], labels: list[str], multiclass: bool) -> dict[str, Any]:
    """Sensitivity, specificity, FN, FP from confusion counts summed over the folds: the finding of a binary task,
    the micro row of a multi-label task, for a multi-class task the mean of the classes' pooled one-vs-rest rates."""
    from chestxray.evaluation.metrics import counts_to_rates

    def summed(name: str) -> tuple[int, int, int, int]:
        rows = [s.set_index("finding").loc[name] for s in summaries]
        if any(pd.isna(r["tp"]) for r in rows):
            return (-1, -1, -1, -1)
        return tuple(int(sum(r[c] for r in rows)) for c in ("tp", "fp", "fn", "tn"))  # type: ignore[return-value]

    empty = {"sensitivity": None, "specificity": None, "fn": None, "fp": None}
    if not multiclass:
        counts = summed(labels[0] if len(labels) == 1 else "micro")
        if counts[0] < 0:
            return empty
        c = counts_to_rates(*counts)
        return {"sensitivity": c.sensitivity, "specificity": c.specificity, "fn": c.fn, "fp": c.fp}
    per_class = [summed(name) for name in labels]
    rates = [counts_to_rates(*c) for c in per_class if c[0] >= 0]
    if not rates:
        return empty
    sens = [c.sensitivity for c in rates if c.sensitivity is not None]
    spec = [c.specificity for c in rates if c.specificity is not None]
    return {"sensitivity": float(np.mean(sens)) if sens else None, "specificity": float(np.mean(spec)) if spec
            else None, "fn": sum(c.fn for c in rates), "fp": sum(c.fp for c in rates)}


def pool_group(runs: pd.DataFrame, out: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Pool one (group, seed)'s fold predictions into out/eval/ and return the pooled estimate's numbers."""
    from chestxray.data.tasks import is_multiclass
    from chestxray.evaluation.metrics import summarize
    from chestxray.evaluation.multiclass import multiclass_summary

    frames, summaries, meta = [], [], {}
    for row in runs.sort_values("fold").to_dict("records"):
        frame, meta, summary = _eval(row["run_dir"])
        frames.append(frame.assign(fold=int(row["fold"])))
        summaries.append(summary)
    pooled = pd.concat(frames, ignore_index=True)
    twice = pooled["image_id"].duplicated()
    if twice.any():
        raise DataError(f"{out}: image {pooled['image_id'][twice].iloc[0]!r} was tested in two folds; the folds "
                        "must not overlap (delete OUT/folds and run the study again)")
    labels, task = list(meta["labels"]), str(meta.get("task", "multilabel"))
    y = pooled[labels].to_numpy()
    p = pooled[[f"p_{x}" for x in labels]].to_numpy()
    patients = pooled["patient_id"].astype(str).tolist()
    multi = is_multiclass(task)
    summary = (multiclass_summary(y, p, labels, patients, n_boot=n_boot, seed=seed)[0] if multi
               else summarize(y, p, labels, patients, None, n_boot=n_boot, seed=seed))
    head = summary.rows[0] if len(summary.rows) == 1 else summary.row("macro")
    folder = out / "eval"
    write_csv(folder / "predictions.csv", pooled)
    write_csv(folder / "summary.csv", summary.to_frame())
    write_json(folder / "metrics.json", {"split": POOLED_SPLIT, "labels": labels, "task": task,
                                         "folds": len(frames), "runs": runs["run"].tolist(), "estimate": ESTIMATE,
                                         **summary.to_dict()})
    return {"test_auroc": head.auroc.value, "test_auroc_low": head.auroc.low, "test_auroc_high": head.auroc.high,
            "test_auroc_note": head.auroc.reason if head.auroc.low is None else "",
            "images": len(pooled), "patients": summary.n_patients,
            **pooled_counts(summaries, labels, multi)}


def select_seeds(runs: pd.DataFrame, rule: str) -> dict[str, int]:
    """Per group, the seed whose mean over the folds of `rule` is best on validation (ties: lowest seed)."""
    means = runs.groupby(["group", "seed"], sort=False)[rule].mean().reset_index()
    means = means.sort_values([rule, "seed"], ascending=[rule == "val_loss", True], na_position="last", kind="stable")
    return {str(g): int(s) for g, s in means.groupby("group", sort=False).head(1)[["group", "seed"]].to_numpy()}


def crossval_groups(study: Any, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The group table (fold mean ± sd and the pooled out-of-fold estimate of the seed selected on validation) and
    the selected pools, indexed by group (run, run_dir pointing to the pool, test_auroc) for the comparisons."""
    seeds = select_seeds(runs, study.select)
    rows, chosen = [], []
    for group, part in runs.groupby("group", sort=False):
        seed = seeds[str(group)]
        mine = part[part["seed"] == seed]
        slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in f"{group}_seed{seed}")
        pool = study.out / POOLED_DIR / slug
        pooled = pool_group(mine, pool, study.n_boot, seed)
        name = f"{group} seed {seed}, {len(mine)} folds pooled"
        rows.append({
            "group": group, "runs": len(part), "folds": int(part["fold"].nunique()),
            "val_auroc_mean": part["val_auroc"].mean(), "val_auroc_sd": part["val_auroc"].std(ddof=1),
            "test_auroc_mean": part["test_auroc"].mean(), "test_auroc_sd": part["test_auroc"].std(ddof=1),
            "fold_auroc_mean": mine["test_auroc"].mean(), "fold_auroc_sd": mine["test_auroc"].std(ddof=1),
            "selected_run": name, "selected_by": f"{study.select} (mean over folds)",
            "selected_val": mine[study.select].mean(),
            "selected_test_auroc": pooled["test_auroc"], "selected_test_low": pooled["test_auroc_low"],
            "selected_test_high": pooled["test_auroc_high"], "selected_test_note": pooled["test_auroc_note"],
            "sensitivity": pooled["sensitivity"], "specificity": pooled["specificity"], "fn": pooled["fn"],
            "fp": pooled["fp"], "train_seconds_mean": part["train_seconds"].mean(),
            "parameters": mine["parameters"].iloc[0], "images_per_s_mean": part["images_per_s"].mean(),
            "estimate": ESTIMATE, "pooled_images": pooled["images"], "pooled_patients": pooled["patients"],
            "pooled_dir": str(pool),
        })
        chosen.append({"group": group, "run": name, "run_dir": str(pool), "test_auroc": pooled["test_auroc"],
                       "curves_dir": str(mine.sort_values("fold")["run_dir"].iloc[0])})
    return pd.DataFrame(rows), pd.DataFrame(chosen).set_index("group")
