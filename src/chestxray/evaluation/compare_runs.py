"""Paired comparison of two evaluated runs on the same split: AUROC difference per finding with DeLong's test
(Holm-corrected over findings) and a paired patient-bootstrap interval, plus the macro difference.

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
from chestxray.evaluation.statistics import delong_test, holm, paired_bootstrap

COLUMNS = ["finding", "positives", "auroc_a", "auroc_b", "diff", "low", "high", "p", "p_holm", "test"]


@dataclass
class Comparison:
    """Run a vs run b on one split: one row per finding (plus 'macro') and how it was computed."""

    name_a: str
    name_b: str
    split: str
    n_images: int
    n_patients: int
    n_boot: int
    table: pd.DataFrame  # COLUMNS; diff = a - b
    method: str

    def sentence(self, finding: str = "macro") -> str:
        """Plain words: 'a vs b: +0.021 AUROC [0.004, 0.039], p = 0.02 (DeLong)' for a finding or the macro."""
        rows = self.table[self.table["finding"] == finding]
        if rows.empty:
            raise KeyError(f"no comparison row {finding!r}; rows are {self.table['finding'].tolist()}")
        r = rows.iloc[0]
        if pd.isna(r["diff"]):
            return f"{self.name_a} vs {self.name_b} ({finding}): n/a ({r['test']})"
        ci = f" [{r['low']:+.3f}, {r['high']:+.3f}]" if pd.notna(r["low"]) else ""
        where = "" if finding == "macro" or len(self.table) <= 2 else f" ({finding})"
        if pd.notna(r["p"]):
            test = f", {p_text(r['p'])} (DeLong)"
            if pd.notna(r["p_holm"]) and len(self.table) > 2:
                test += f", Holm-adjusted {p_text(r['p_holm'])}"
        else:
            test = f" ({r['test']})"
        return f"{self.name_a} vs {self.name_b}{where}: {r['diff']:+.3f} AUROC{ci}{test}"

    def headline(self) -> str:
        """The macro sentence for several findings, the one finding's sentence for a binary task."""
        findings = self.table[self.table["finding"] != "macro"]
        return self.sentence(findings["finding"].iloc[0] if len(findings) == 1 else "macro")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names, split, sizes, method and the rows (NaN as null)."""
        rows = json.loads(self.table.to_json(orient="records"))
        return {"a": self.name_a, "b": self.name_b, "split": self.split, "n_images": self.n_images,
                "n_patients": self.n_patients, "bootstrap_replicates": self.n_boot, "method": self.method,
                "rows": rows, "headline": self.headline()}


def format_p(p: float) -> str:
    """p-values as people read them: two significant digits, '< 0.001' below that."""
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float) -> str:
    """'p = 0.02' or 'p < 0.001'."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def compare_predictions(
    frame_a: pd.DataFrame, frame_b: pd.DataFrame, labels: Sequence[str], name_a: str = "a", name_b: str = "b",
    split: str = "test", n_boot: int = 1000, seed: int = 0,
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
    y = merged[labels].to_numpy().astype(np.uint8)
    a = merged[[f"p_{x}_a" for x in labels]].to_numpy(np.float64)
    b = merged[[f"p_{x}_b" for x in labels]].to_numpy(np.float64)
    patients = merged["patient_id"].astype(str).tolist()
    boot = paired_bootstrap(y, a, b, patients, n_boot=n_boot, seed=seed)
    rows, p_values = [], []
    for j, name in enumerate(labels):
        pos = int(y[:, j].sum())
        if not 0 < pos < len(y):
            rows.append({"finding": name, "positives": pos, "test": "AUROC undefined (one class only)"})
            p_values.append(None)
            continue
        d = delong_test(y[:, j], a[:, j], b[:, j])
        rows.append({"finding": name, "positives": pos, "auroc_a": d.auc_a, "auroc_b": d.auc_b, "diff": d.diff,
                     "low": boot.low[j], "high": boot.high[j], "p": d.p, "test": "DeLong"})
        p_values.append(d.p)
    for row, adjusted in zip(rows, holm(p_values)):
        row["p_holm"] = adjusted
    defined = [r for r in rows if "diff" in r]
    if len(labels) > 1:
        rows.append({"finding": "macro", "positives": int(y.sum()),
                     "auroc_a": np.mean([r["auroc_a"] for r in defined]) if defined else None,
                     "auroc_b": np.mean([r["auroc_b"] for r in defined]) if defined else None,
                     "diff": np.mean([r["diff"] for r in defined]) if defined else None,
                     "low": boot.macro_low, "high": boot.macro_high,
                     "test": "paired patient bootstrap (no DeLong test for a mean over findings)"})
    table = pd.DataFrame(rows, columns=COLUMNS)
    method = (f"DeLong's test per finding (fast midrank algorithm, images as units), Holm-corrected over "
              f"{len(defined)} findings; {int(100 * 0.95)}% intervals from a paired stratified patient bootstrap "
              f"({n_boot} replicates, seed {seed}); difference = {name_a} - {name_b}")
    return Comparison(name_a, name_b, split, len(y), len(set(patients)), n_boot, table, method)


def read_eval(run: str | Path) -> tuple[pd.DataFrame, list[str], str]:
    """A run's evaluated predictions, label names and split (RUN/eval/ from chestxray evaluate)."""
    folder = Path(run) / "eval"
    metrics, preds = folder / "metrics.json", folder / "predictions.csv"
    if not metrics.is_file() or not preds.is_file():
        raise DataError(f"{run}: no eval/metrics.json and eval/predictions.csv; run chestxray evaluate {run} first")
    meta = json.loads(metrics.read_text(encoding="utf-8"))
    frame = pd.read_csv(preds, dtype={"image_id": str, "patient_id": str})
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
