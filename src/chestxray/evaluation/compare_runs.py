"""Paired comparison of two evaluated runs on the same split: AUROC difference per finding with Obuchowski's
clustered test (patients as clusters; Holm-corrected over the findings tested), a paired patient-bootstrap interval,
and the macro difference with its own clustered test. Every interval and test obeys the minimum-sample rule
(chestxray.evaluation.sample_rule): a finding short of patients gets words instead of a p-value and interval.

Reads RUN/eval/predictions.csv (written by `chestxray evaluate`); both runs must have scored the same images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import DataError
from chestxray.evaluation.bootstrap import patient_codes
from chestxray.evaluation.metrics import MACRO_ELIGIBLE
from chestxray.evaluation.sample_rule import MIN_PATIENTS, RULE, class_patients, too_few
from chestxray.evaluation.statistics import (
    CLUSTERED_MACRO_TEST,
    CLUSTERED_TEST,
    clustered_macro_test,
    clustered_test,
    holm,
    paired_bootstrap,
)
from chestxray.files import read_csv

COLUMNS = ["finding", "positives", "positive_patients", "negative_patients", "auroc_a", "auroc_b", "diff", "low",
           "high", "p", "p_holm", "test"]
SHORT_TEST = "Obuchowski, patients as clusters"  # the test's name in a sentence


@dataclass
class Comparison:
    """Run a vs run b on one split: one row per finding (plus 'macro', and 'macro_eligible' when some findings are
    short of patients) and how it was computed."""

    name_a: str
    name_b: str
    split: str
    n_images: int
    n_patients: int
    n_boot: int
    table: pd.DataFrame  # COLUMNS; diff = a - b
    method: str

    def sentence(self, finding: str = "macro") -> str:
        """Plain words: 'a vs b: +0.021 AUROC [+0.004, +0.039], p = 0.02 (Obuchowski, patients as clusters)' for a
        finding or a macro row; the rule's words where there is no test."""
        rows = self.table[self.table["finding"] == finding]
        if rows.empty:
            raise KeyError(f"no comparison row {finding!r}; rows are {self.table['finding'].tolist()}")
        r = rows.iloc[0]
        n_findings = int((~self.table["finding"].isin(["macro", MACRO_ELIGIBLE])).sum())
        where = "" if finding == "macro" or n_findings <= 1 else f" ({finding})"
        if finding == MACRO_ELIGIBLE:
            where = f" (macro over the findings with enough patients: {r['test'].rsplit('(', 1)[-1].rstrip(')')})"
        if pd.isna(r["diff"]):
            return f"{self.name_a} vs {self.name_b}{where}: n/a ({r['test']})"
        ci = f" [{r['low']:+.3f}, {r['high']:+.3f}]" if pd.notna(r["low"]) else ""
        if pd.notna(r["p"]):
            test = f", {p_text(r['p'])} ({SHORT_TEST})"
            if pd.notna(r["p_holm"]) and n_findings > 1 and finding not in ("macro", MACRO_ELIGIBLE):
                test += f", Holm-adjusted {p_text(r['p_holm'])}"
        else:
            test = f"; {r['test']}"
        return f"{self.name_a} vs {self.name_b}{where}: {r['diff']:+.3f} AUROC{ci}{test}"

    def headline_row(self) -> str:
        """The row a one-line summary reports: the one finding of a binary task; else the macro when it has a
        test, the macro over eligible findings when only that has one, the macro otherwise."""
        findings = self.table[~self.table["finding"].isin(["macro", MACRO_ELIGIBLE])]
        if len(findings) == 1:
            return str(findings["finding"].iloc[0])
        t = self.table.set_index("finding")
        if pd.isna(t.loc["macro", "p"]) and MACRO_ELIGIBLE in t.index and pd.notna(t.loc[MACRO_ELIGIBLE, "p"]):
            return MACRO_ELIGIBLE
        return "macro"

    def headline(self) -> str:
        """The headline row's sentence."""
        return self.sentence(self.headline_row())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names, split, sizes, method and the rows (NaN as null)."""
        rows = json.loads(self.table.to_json(orient="records"))
        return {"a": self.name_a, "b": self.name_b, "split": self.split, "n_images": self.n_images,
                "n_patients": self.n_patients, "bootstrap_replicates": self.n_boot, "method": self.method,
                "rule": RULE, "rows": rows, "headline": self.headline()}


def format_p(p: float) -> str:
    """p-values as people read them: two significant digits, '< 0.001' below that."""
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float) -> str:
    """'p = 0.02' or 'p < 0.001'."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def compare_predictions(
    frame_a: pd.DataFrame, frame_b: pd.DataFrame, labels: Sequence[str], name_a: str = "a", name_b: str = "b",
    split: str = "test", n_boot: int = 1000, seed: int = 0, min_patients: int = MIN_PATIENTS,
) -> Comparison:
    """Compare two prediction frames (image_id, patient_id, labels, p_<label>) of the same images."""
    labels = list(labels)
    need = ["image_id", "patient_id", *labels, *(f"p_{x}" for x in labels)]
    for name, frame in ((name_a, frame_a), (name_b, frame_b)):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise DataError(f"{name}: predictions lack column(s) {missing}; re-run chestxray evaluate")
    merged = frame_a[need].merge(frame_b[["image_id", *(f"p_{x}" for x in labels)]], on="image_id",
                                 how="outer", suffixes=("_a", "_b"), indicator=True)
    if (merged["_merge"] != "both").any() or len(merged) != len(frame_a):
        only_a = int((merged["_merge"] == "left_only").sum())
        only_b = int((merged["_merge"] == "right_only").sum())
        raise DataError(f"{name_a} and {name_b} scored different images ({only_a} only in {name_a}, {only_b} only in "
                        f"{name_b}); evaluate both runs on the same prepared data and split")
    partial = [x for x in labels if merged[x].isna().any()]  # a merged dataset: missing for some sources' images
    if partial:
        labels = [x for x in labels if x not in partial]
        if not labels:
            raise DataError(f"{name_a} and {name_b}: no finding is annotated for every evaluated image (a merged "
                            "dataset); compare their per-source results (metrics.json by_source) instead")
    y = merged[labels].to_numpy().astype(np.uint8)
    a = merged[[f"p_{x}_a" for x in labels]].to_numpy(np.float64)
    b = merged[[f"p_{x}_b" for x in labels]].to_numpy(np.float64)
    patients = merged["patient_id"].astype(str).tolist()
    codes, n_pat = patient_codes(patients)
    boot = paired_bootstrap(y, a, b, patients, n_boot=n_boot, seed=seed)
    rows, defined, eligible = [], [], []
    for j, name in enumerate(labels):
        pos, neg = class_patients(y[:, j], codes, n_pat)
        row: dict[str, Any] = {"finding": name, "positives": int(y[:, j].sum()), "positive_patients": pos,
                               "negative_patients": neg}
        rows.append(row)
        if not 0 < y[:, j].sum() < len(y):
            row["test"] = "AUROC undefined (one class only)"
            continue
        defined.append(j)
        short = too_few(pos, neg, "a test", min_patients)
        if short is not None:
            d = _aurocs(y[:, j], a[:, j], b[:, j])
            row.update({"auroc_a": d[0], "auroc_b": d[1], "diff": d[0] - d[1], "test": short})
            continue
        eligible.append(j)
        t = clustered_test(y[:, j], a[:, j], b[:, j], patients)
        row.update({"auroc_a": t.auc_a, "auroc_b": t.auc_b, "diff": t.diff, "low": boot.low[j], "high": boot.high[j],
                    "p": t.p, "test": CLUSTERED_TEST})
    for row, adjusted in zip(rows, holm([r.get("p") for r in rows])):
        row["p_holm"] = adjusted
    if len(labels) > 1:
        rows.extend(_macro_rows(rows, defined, eligible, y, a, b, patients, boot, min_patients))
    table = pd.DataFrame(rows, columns=COLUMNS)
    method = (f"{CLUSTERED_TEST} per finding (DeLong's structural components summed per patient, Obuchowski 1997), "
              f"Holm-corrected over the {len(eligible)} findings tested (family: the findings of this pair); "
              f"{int(100 * boot.ci)}% intervals from a paired stratified patient bootstrap ({n_boot} replicates, seed "
              f"{seed}); {RULE}; difference = {name_a} - {name_b}"
              + (f"; not compared (missing for some images): {', '.join(partial)}" if partial else ""))
    return Comparison(name_a, name_b, split, len(y), n_pat, n_boot, table, method)


def _aurocs(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two AUROCs of one finding (no test)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, a)), float(roc_auc_score(y, b))


def _macro_rows(rows: list[dict[str, Any]], defined: list[int], eligible: list[int], y: np.ndarray, a: np.ndarray,
                b: np.ndarray, patients: list[str], boot: Any, min_patients: int) -> list[dict[str, Any]]:
    """'macro' over every defined finding, tested only when all pass the rule; 'macro_eligible' over those that
    pass when some do not."""

    def mean_row(name: str, cols: list[int], test: bool, words: str) -> dict[str, Any]:
        row: dict[str, Any] = {"finding": name, "positives": int(sum(rows[j]["positives"] for j in cols))}
        if not cols:
            return {**row, "test": words}
        row.update({k: float(np.mean([rows[j][k] for j in cols])) for k in ("auroc_a", "auroc_b", "diff")})
        if not test:
            return {**row, "test": words}
        m = clustered_macro_test(y, a, b, patients, cols)
        low, high = boot.mean_interval(cols)
        names = ", ".join(rows[j]["finding"] for j in cols)
        return {**row, "low": low, "high": high, "p": m.p,
                "test": f"{CLUSTERED_MACRO_TEST} over {len(cols)} finding{'s' if len(cols) > 1 else ''} ({names})"}

    failing = [rows[j]["finding"] for j in defined if j not in eligible]
    rule = f"each needs at least {min_patients} positive and {min_patients} negative patients"
    if not defined:
        words = "AUROC undefined for every finding"
    elif failing:
        words = (f"no test: {len(failing)} of the {len(defined)} findings in the mean have too few patients "
                 f"({', '.join(failing)}); {rule}" + (f"; see {MACRO_ELIGIBLE!r}" if eligible else ""))
    else:
        words = ""
    out = [mean_row("macro", defined, not failing, words)]
    if failing and eligible:
        out.append(mean_row(MACRO_ELIGIBLE, eligible, True, ""))
    return out


def read_eval(run: str | Path) -> tuple[pd.DataFrame, list[str], str]:
    """A run's evaluated predictions, label names and split (RUN/eval/ from chestxray evaluate)."""
    folder = Path(run) / "eval"
    metrics, preds = folder / "metrics.json", folder / "predictions.csv"
    if not metrics.is_file() or not preds.is_file():
        raise DataError(f"{run}: no eval/metrics.json and eval/predictions.csv; run chestxray evaluate {run} first")
    meta = json.loads(metrics.read_text(encoding="utf-8"))
    frame = read_csv(preds, dtype={"image_id": str, "patient_id": str})
    return frame, list(meta["labels"]), str(meta.get("split", "test"))


def compare_runs(run_a: str | Path, run_b: str | Path, n_boot: int = 1000, seed: int = 0,
                 names: tuple[str, str] | None = None) -> Comparison:
    """Compare two evaluated runs (same labels, split and images); names default to the run folders' names."""
    fa, labels_a, split_a = read_eval(run_a)
    fb, labels_b, split_b = read_eval(run_b)
    if labels_a != labels_b:
        raise DataError(f"{run_a} and {run_b} have different labels ({labels_a} vs {labels_b}); compare like with like")
    if split_a != split_b:
        raise DataError(f"{run_a} was evaluated on {split_a} and {run_b} on {split_b}; evaluate both on the same split")
    name_a, name_b = names or (Path(run_a).resolve().name, Path(run_b).resolve().name)
    return compare_predictions(fa, fb, labels_a, name_a, name_b, split_a, n_boot, seed)
