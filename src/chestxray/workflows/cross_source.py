"""The cross-dataset matrix of a study on a merged dataset: train on each source (and on all), test on each.

Every study run is evaluated on the merged test split, per source (chestxray.evaluation.evaluate.source_summaries:
each finding on the images that annotate it, patient-bootstrap intervals, the one minimum-sample rule). This module
turns those per-source results into
- study_sources.csv: one row per (run, test source, finding): images, positives, positive/negative patients, AUROC
  with its interval or the rule's words;
- study_cross_source_<finding>.csv / .png for each finding that every test source annotates: rows the selected run
  of each group (e.g. trained on nih / kaggle / covid / all), columns the test sources and the pooled test split,
  cells AUROC (95% CI), or the AUROC with "too few" where the rule withholds the interval.
The pooled column mixes sources whose prevalence differs, so a model that only recognises the source scores well
there; the per-source columns are the external tests (Zech et al. 2018).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.files import write_csv

POOLED = "all (pooled)"


def source_records(by_source: dict[str, Any], overall: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """{test source: {finding: numbers}} from per-source Summaries plus the pooled one (key POOLED), for
    study_row.json."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for source, summary in [*by_source.items(), (POOLED, overall)]:
        out[source] = {r.name: {"n": r.n, "positives": r.positives, "positive_patients": r.positive_patients,
                                "negative_patients": r.negative_patients, "auroc": r.auroc.value,
                                "low": r.auroc.low, "high": r.auroc.high, "reason": r.auroc.reason or ""}
                       for r in summary.rows if r.kind == "finding"}
    return out


def sources_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """study_sources.csv from the study rows that carry `by_source` (others are skipped)."""
    records = []
    for row in rows:
        for source, findings in (row.get("by_source") or {}).items():
            for finding, v in findings.items():
                records.append({"run": row["run"], "group": row["group"], "seed": row["seed"],
                                "trained_on": row.get("setting_sources") or "all", "test_source": source,
                                "finding": finding, **v})
    return pd.DataFrame(records)


def shared_findings(table: pd.DataFrame) -> list[str]:
    """Findings annotated (n > 0) in every test source of the table, in first-met order."""
    if table.empty:
        return []
    per = table[table["test_source"] != POOLED]
    sources = set(per["test_source"])
    have = per[per["n"] > 0].groupby("finding", sort=False)["test_source"].agg(set)
    return [f for f, s in have.items() if s == sources]


def cell(v: dict[str, Any] | pd.Series) -> str:
    """'0.812 (0.770–0.850)', '0.640 (too few: 3 positive patients)' or 'n/a (reason)'."""
    auroc = v.get("auroc")
    if auroc is None or (isinstance(auroc, float) and np.isnan(auroc)):
        return f"n/a ({v.get('reason') or 'undefined'})"
    low, high = v.get("low"), v.get("high")
    if low is not None and not (isinstance(low, float) and np.isnan(low)):
        return f"{auroc:.3f} ({low:.3f}–{high:.3f})"
    return f"{auroc:.3f} (too few: {int(v['positive_patients'])} pos / {int(v['negative_patients'])} neg patients)"


def matrix(table: pd.DataFrame, chosen_runs: list[str], finding: str) -> pd.DataFrame:
    """Rows: the chosen runs' training sources; columns: the test sources then POOLED; long numbers kept in
    columns '<source> auroc/low/high/reason/positive_patients/negative_patients'."""
    part = table[(table["finding"] == finding) & table["run"].isin(chosen_runs)]
    sources = [s for s in dict.fromkeys(part["test_source"]) if s != POOLED] + [POOLED]
    rows = []
    for run in chosen_runs:
        mine = part[part["run"] == run]
        if mine.empty:
            continue
        row: dict[str, Any] = {"trained_on": str(mine["trained_on"].iloc[0]), "run": run}
        for source in sources:
            hit = mine[mine["test_source"] == source]
            if hit.empty:
                continue
            v = hit.iloc[0]
            row[source] = cell(v)
            for key in ("auroc", "low", "high", "positive_patients", "negative_patients", "reason"):
                row[f"{source} {key}"] = v[key]
        rows.append(row)
    return pd.DataFrame(rows)


def write_cross_source(out: Path, rows: list[dict[str, Any]], chosen_runs: list[str]) -> list[Path]:
    """study_sources.csv and, per shared finding, the matrix as CSV and PNG; returns the files written."""
    from chestxray.evaluation.plots import plot_source_matrix

    table = sources_table(rows)
    if table.empty:
        return []
    files = [write_csv(out / "study_sources.csv", table)]
    for finding in shared_findings(table):
        frame = matrix(table, chosen_runs, finding)
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", finding)
        files.append(write_csv(out / f"study_cross_source_{slug}.csv", frame))
        sources = [s for s in dict.fromkeys(table["test_source"]) if s != POOLED and s in frame] + [POOLED]
        files.append(plot_source_matrix(frame, sources, finding, out / f"study_cross_source_{slug}.png"))
    return files
