"""Audit an evaluated run by subgroup: reads what `evaluate` stored (RUN/eval predictions and thresholds) and the
catalog's attributes, and writes subgroups.csv, audit.json and subgroups.png into the audit folder (RUN/audit).

No image is decoded here: the scores are evaluate's, so the audit judges exactly the numbers the report shows.
(The shortcut measurements that must re-score images live in chestxray.evaluation.shortcut_audit.)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chestxray.errors import DataError
from chestxray.evaluation.disparities import ANY, make_tasks, subgroup_table
from chestxray.evaluation.metrics import _clean
from chestxray.evaluation.sample_rule import RULE
from chestxray.evaluation.subgroups import Attribute, default_attributes, resolve_attributes
from chestxray.files import read_csv, write_csv, write_json

log = logging.getLogger(__name__)

AUDIT_DIR = "audit"
SUBGROUPS_CSV = "subgroups.csv"
AUDIT_JSON = "audit.json"
FIGURE = "subgroups.png"
NORMAL_NAMES = ("normal", "no finding", "no_finding", "nofinding")
DEFINITION = ("under-diagnosis rate (Seyyed-Kalantari et al., Nature Medicine 2021): among images with at least one "
              "finding, the share the model calls normal (every finding below its stored threshold); thresholds are "
              "the ones chosen once on the whole validation split, never per subgroup")


@dataclass
class SubgroupAudit:
    """What a subgroup audit found: the table (one row per attribute x subgroup x finding), its settings and flags."""

    table: pd.DataFrame
    split: str
    attributes: list[Attribute]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> pd.DataFrame:
        """Rows with a significant gap after Holm's correction (mirror rows of a two-group attribute included)."""
        return self.table[self.table["flag"] != ""] if "flag" in self.table else self.table.iloc[:0]

    def sentences(self) -> list[str]:
        """Plain-words findings: each flagged gap of a group against the rest (a two-group gap said once, from the
        side that fares worse), or that none was found."""
        if self.table.empty:
            return list(self.notes[:1])
        lines = []
        for _, r in self.flagged.iterrows():
            two = not str(r["compared_with"]).startswith("not ")
            worse = r["fnr_diff"] > 0 if r["fnr_p_holm"] < self.settings["alpha"] else r["auroc_diff"] < 0
            if two and not worse:
                continue
            lines.append(f"{r['attribute']} = {r['subgroup']} vs {r['compared_with']}, {r['finding']}: {r['flag']}")
        if not lines:
            tested = self.settings.get("comparisons", 0)
            lines.append(f"no subgroup gap is significant after Holm's correction over {tested} comparison(s) "
                         f"(alpha {self.settings['alpha']}); absence of evidence, not evidence of equality: read the "
                         "intervals")
        return lines


def eval_frames(run: Path, split: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The stored predictions of `split` (RUN/eval) and evaluate's metrics.json; a DataError says what to run when
    the run was not evaluated on that split."""
    eval_dir = run / "eval"
    metrics_path = eval_dir / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(f"{run}: no eval/metrics.json; run `chestxray evaluate {run}` first (the audit uses its scores "
                        "and thresholds)")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    evaluated = metrics.get("split", "test")
    name = "predictions.csv" if split == evaluated else "val_predictions.csv" if split == "val" else None
    if name is None:
        raise DataError(f"{run}: eval/ holds the {evaluated!r} split, not {split!r}; run `chestxray evaluate {run} "
                        f"--split {split}` first")
    frame = read_csv(eval_dir / name, dtype={"image_id": str, "patient_id": str})
    if split == "val":
        log.warning("auditing the validation split, where the thresholds were chosen: rates are optimistic")
    return frame, metrics


def catalog_table(metrics: dict[str, Any], catalog: str | Path | None = None) -> pd.DataFrame:
    """The catalog rows (with their attributes) behind the evaluated data: `catalog` if given, else the one the
    prepared manifest names."""
    from chestxray.data.catalog import load_catalog
    from chestxray.data.shards import read_manifest

    if catalog is None:
        prepared = metrics.get("prepared")
        if not prepared or prepared == "None":
            raise DataError("eval/metrics.json names no prepared dataset; pass --catalog CATALOG")
        catalog = read_manifest(prepared).get("catalog") or None
        if not catalog:
            raise DataError(f"{prepared}: the manifest names no catalog folder (prepared from an in-memory catalog); "
                            "pass --catalog CATALOG")
    return load_catalog(catalog).table


def join_attributes(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Predictions with the catalog's columns beside them (by image_id); a DataError when images are not found."""
    meta = table.drop(columns=[c for c in table.columns if c in frame.columns and c != "image_id"])
    joined = frame.merge(meta, on="image_id", how="left", indicator=True)
    missing = joined["_merge"] != "both"
    if missing.all():
        raise DataError(f"none of the {len(frame)} evaluated images is in the catalog (e.g. {frame['image_id'].iloc[0]!r})"
                        "; pass the catalog the data was prepared from with --catalog")
    if missing.any():
        log.warning("%d evaluated image(s) are not in the catalog; their attributes are unknown", int(missing.sum()))
    return joined.drop(columns="_merge")


def normal_label(labels: Sequence[str]) -> str | None:
    """The label that means 'no finding' in a multi-class schema (NORMAL, No Finding, ...), if any."""
    return next((x for x in labels if x.lower() in NORMAL_NAMES), None)


def audit_subgroups(frame: pd.DataFrame, labels: Sequence[str], thresholds: dict[str, float] | None,
                    by: Sequence[str] | None = None, task: str = "multilabel", split: str = "test",
                    n_boot: int = 1000, ci: float = 0.95, alpha: float = 0.05, seed: int = 0) -> SubgroupAudit:
    """Subgroup table for predictions with attributes beside them (image_id, patient_id, labels, p_<label>, catalog
    columns): attributes `by` (default: those the catalog carries), thresholds as stored (never re-chosen)."""
    labels = list(labels)
    if not by and not default_attributes(frame):
        note = ("the catalog carries no patient or acquisition attribute (sex, age, view, location, site, "
                "manufacturer, ...): no subgroup table; name a column with --by, or keep one with --keep-cols")
        return SubgroupAudit(pd.DataFrame(), split, [], {"split": split, "alpha": alpha, "comparisons": 0,
                                                          "n_boot": n_boot, "seed": seed, "unit": "patient",
                                                          "rule": RULE, "definition": DEFINITION}, [note])
    attributes = resolve_attributes(frame, by, ignore=[*labels, *(f"p_{x}" for x in labels)])
    multiclass = task == "multiclass"
    tasks = make_tasks(frame[labels].to_numpy(), frame[[f"p_{x}" for x in labels]].to_numpy(), labels, thresholds,
                       multiclass, normal_label(labels) if multiclass else None)
    table = subgroup_table(frame, tasks, attributes, n_boot=n_boot, ci=ci, alpha=alpha, seed=seed)
    notes = [f"{a.name}: {a.unknown} image(s) with no value are left out of its comparisons"
             for a in attributes if a.unknown]
    if not any(t.name == ANY for t in tasks) and len(tasks) > 1:
        notes.append("no 'no finding' class in this multi-class schema: no under-diagnosis rate")
    settings = {"split": split, "attributes": {a.name: {"column": a.column, "groups": a.how, "levels": a.levels,
                                                        "unknown": a.unknown} for a in attributes},
                "thresholds": thresholds or {}, "task": task, "n_boot": n_boot, "ci": ci, "alpha": alpha,
                "seed": seed, "comparisons": int(table.attrs.get("comparisons", 0)),
                "unit": "patient", "rule": RULE, "definition": DEFINITION,
                "test": "each group against the rest of the split (two groups: against each other); Wald z with the "
                        "larger of the patient-bootstrap SE and the SE under no difference; Holm over every "
                        "comparison of AUROC and FNR made",
                "prevalence_control": "pc_ppv: PPV at the split's prevalence; pc_underdiagnosis: under-diagnosis "
                                      "rate standardised to the split's mix of 1, 2 and 3+ findings per sick image; "
                                      "AUROC, sensitivity, specificity and FNR of one finding do not depend on "
                                      "prevalence (computed within a class), so resampling leaves them unchanged"}
    return SubgroupAudit(table, split, attributes, settings, notes)


def load_audit_frame(run_dir: str | Path, split: str = "test", catalog: str | Path | None = None
                     ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """What `evaluate` stored for RUN on `split` (scores, labels, patient ids) joined with the catalog's columns
    (path and attributes), and evaluate's metrics.json (labels, thresholds, task)."""
    frame, metrics = eval_frames(Path(run_dir), split)
    return join_attributes(frame, catalog_table(metrics, catalog)), metrics


def audit_run_subgroups(run_dir: str | Path, split: str = "test", by: Sequence[str] | None = None,
                        catalog: str | Path | None = None, n_boot: int = 1000, ci: float = 0.95, alpha: float = 0.05,
                        seed: int = 0) -> SubgroupAudit:
    """audit_subgroups on what `evaluate` stored for RUN (its scores, its thresholds) joined with the catalog."""
    joined, metrics = load_audit_frame(run_dir, split, catalog)
    return audit_subgroups(joined, list(metrics["labels"]), metrics.get("thresholds") or {}, by,
                           str(metrics.get("task") or "multilabel"), split, n_boot, ci, alpha, seed)


def write_subgroup_audit(result: SubgroupAudit, out: str | Path) -> dict[str, Path]:
    """subgroups.csv, audit.json (settings, notes, findings in words) and subgroups.png into the folder `out`."""
    from chestxray.evaluation.audit_plots import plot_subgroups

    out = Path(out)
    written = {"subgroups": write_csv(out / SUBGROUPS_CSV, result.table)}
    record = {**result.settings, "notes": result.notes, "findings": result.sentences(),
              "flagged": int((result.table["flag"] != "").sum()) if "flag" in result.table else 0,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    written["json"] = write_json(out / AUDIT_JSON, _clean(record))
    if len(result.table):
        written["figure"] = plot_subgroups(result.table, out / FIGURE, result.settings["alpha"])
    return written

