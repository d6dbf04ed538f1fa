"""The audit as a page a person reads (RUN/audit/audit.html) and as the "Audit" section of the run report: the
subgroup findings in words, the headline table (under-diagnosis per subgroup), the figure, the per-finding gaps, and
the shortcut and explanation-coverage measurements when the audit made them. Self-contained HTML (images inline).

Stable hooks: section#audit, table#audit-table, table#audit-findings-table, figure#plot-subgroups, #audit-shortcuts,
#audit-coverage.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

import chestxray
from chestxray.errors import DataError
from chestxray.evaluation.audit import AUDIT_DIR, AUDIT_JSON, FIGURE, SUBGROUPS_CSV
from chestxray.evaluation.audit_plots import headline_task
from chestxray.files import png_data_url, read_csv, write_text

PAGE = "audit.html"
EXTRA_TABLES = {"shortcuts": "shortcuts.csv", "counterfactual": "counterfactual.csv", "probe": "probe.csv",
                "coverage": "explain_coverage.csv"}
EXTRA_FIGURES = ("shortcuts.png",)
SHOWN_FIRST = {"shortcuts": "drop", "counterfactual": "changed"}  # long tables: the page shows these rows first
MAX_ROWS = 15


def _num(value: Any, digits: int = 3) -> str:
    """A table number: 'n/a' for missing, else fixed-point."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _ci(row: pd.Series, key: str) -> str:
    """' [lo, hi]' when the interval exists, else ''."""
    lo, hi = row.get(f"{key}_low"), row.get(f"{key}_high")
    return f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) and pd.notna(hi) else ""


def _diff(row: pd.Series, key: str) -> str:
    """'+0.21 [+0.10, +0.32], p_holm 0.003' for a tested difference; the difference alone when untested."""
    d = row.get(f"{key}_diff")
    if d is None or pd.isna(d):
        return "n/a"
    text = f"{d:+.3f}"
    if pd.notna(row.get(f"{key}_diff_low")):
        text += f" [{row[f'{key}_diff_low']:+.3f}, {row[f'{key}_diff_high']:+.3f}]"
    if pd.notna(row.get(f"{key}_p_holm")):
        text += f", p_holm {row[f'{key}_p_holm']:.3g}"
    return text


def _data_uri(path: Path) -> str:
    return png_data_url(path)


def _rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Cells of the headline table: one row per attribute and subgroup."""
    out = []
    for _, r in table.iterrows():
        out.append({"flagged": bool(r.get("flag")), "cells": [
            r["attribute"], r["subgroup"], str(int(r["images"])), str(int(r["patients"])), _num(r["prevalence"]),
            (_num(r["auroc"]), _ci(r, "auroc")), _num(r["sensitivity"]), _num(r["specificity"]),
            (_num(r["fnr"]), _ci(r, "fnr")), _num(r.get("pc_underdiagnosis")) if "pc_underdiagnosis" in r else "—",
            _diff(r, "fnr"), _diff(r, "auroc"), r.get("flag") or r.get("note") or ""]})
    return out


def _extra(audit_dir: Path) -> dict[str, Any]:
    """The shortcut / counterfactual / probe / coverage tables and figures the audit wrote, as records."""
    found: dict[str, Any] = {}
    for key, name in EXTRA_TABLES.items():
        path = audit_dir / name
        if path.is_file():
            frame = read_csv(path) if path.stat().st_size > 1 else pd.DataFrame()
            if frame.empty:
                continue
            order = SHOWN_FIRST.get(key)
            if order and order in frame and len(frame) > MAX_ROWS:  # the page shows the strongest rows; CSV has all
                frame = frame.sort_values(order, ascending=False).head(MAX_ROWS)
            found[key] = {"columns": list(frame.columns),
                          "rows": [["" if pd.isna(v) else _num(v) if isinstance(v, float) else str(v) for v in row]
                                   for row in frame.itertuples(index=False)]}
    found["figures"] = [{"src": _data_uri(audit_dir / n), "name": n} for n in EXTRA_FIGURES if (audit_dir / n).is_file()]
    return found


def audit_context(audit_dir: str | Path) -> dict[str, Any] | None:
    """Everything the audit templates show, from an audit folder; None when it holds no audit."""
    folder = Path(audit_dir)
    record_path = folder / AUDIT_JSON
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{record_path}: not valid JSON ({exc}); run `chestxray audit` again") from exc
    context: dict[str, Any] = {"record": record, "folder": str(folder), **_extra(folder)}
    table_path = folder / SUBGROUPS_CSV
    if table_path.is_file() and table_path.stat().st_size > 1:
        table = read_csv(table_path, dtype={"subgroup": str, "flag": str, "note": str, "compared_with": str})
        table[["flag", "note"]] = table[["flag", "note"]].fillna("")
        task = headline_task(table)
        context["task"] = task
        context["rows"] = _rows(table[table["finding"] == task])
        gaps = table[(table["flag"] != "") & (table["finding"] != task)]
        context["gaps"] = [[r["attribute"], r["subgroup"], r["finding"], r["compared_with"], r["flag"]]
                           for _, r in gaps.iterrows()]
        context["figure"] = _data_uri(folder / FIGURE) if (folder / FIGURE).is_file() else None
    return context


def _env() -> Environment:
    return Environment(loader=PackageLoader("chestxray.report", "templates"), autoescape=select_autoescape(["html", "j2"]))


def render_audit_section(audit_dir: str | Path, run: str | Path | None = None) -> str:
    """The audit section's HTML (for the run report), or a line saying how to make one."""
    context = audit_context(audit_dir)
    return _env().get_template("_audit.html.j2").render(audit=context, run=str(run or ""))


def write_audit_page(audit_dir: str | Path, title: str = "") -> Path:
    """audit.html in the audit folder: the audit section as a page of its own (opens offline)."""
    folder = Path(audit_dir)
    context = audit_context(folder)
    if context is None:
        raise DataError(f"{folder}: no {AUDIT_JSON}; run `chestxray audit RUN` first")
    html = _env().get_template("audit.html.j2").render(
        audit=context, title=title or f"Audit of {folder.resolve().parent.name}",
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), version=chestxray.__version__,
        run="")
    return write_text(folder / PAGE, html)


def run_audit_dir(run: str | Path) -> Path:
    """Where `chestxray audit RUN` writes by default: RUN/audit."""
    return Path(run) / AUDIT_DIR
