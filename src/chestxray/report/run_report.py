"""One self-contained HTML report per run: data summary, configuration, training curves, the metrics table with
CIs, the evaluation plots and a few explanation overlays. Images are base64-embedded and the CSS is inline,
so the file opens offline and can be mailed as is.

Stable hooks for tests and styling: table#metrics-table.metrics, table#data-table, figure.plot#plot-<key>
(history, roc, pr, auroc, confusion, calibration), .explain-item.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

import chestxray
from chestxray.data.shards import read_manifest
from chestxray.errors import ChestXrayError, DataError, ModelError
from chestxray.evaluation.evaluate import EVAL_DIR, PLOTS
from chestxray.explain.coverage import MEANING, coverage_text, table_from_scores
from chestxray.files import png_data_url, read_csv, remove_leftovers, write_text
from chestxray.locks import folder_lock
from chestxray.models.bundle import read_card
from chestxray.report.audit_report import render_audit_section, run_audit_dir
from chestxray.report.multiclass import multiclass_context

log = logging.getLogger(__name__)

REPORT = "report.html"
MAX_EXPLANATIONS = 8
PLOT_ORDER = ("auroc", "roc", "pr", "confusion", "calibration")
CAPTIONS = {
    "history": "Training loss and validation loss (left) and validation macro AUROC (right) against step; "
               "the star marks the best validation AUROC (the checkpoint kept).",
    "auroc": "AUROC per finding with patient-bootstrap confidence intervals; macro and normal in orange.",
    "roc": "ROC curve per finding; the red dot is the operating point at the threshold chosen on validation.",
    "pr": "Precision-recall curve per finding; dashed line: prevalence (a random model); red dot: operating point.",
    "confusion": "Confusion matrices at the chosen thresholds (counts and share of each true row).",
    "calibration": "Reliability diagram (observed positive rate against mean predicted probability) and ECE.",
}
METRICS_HEADER = ["finding", "n", "pos.", "AUROC", "AUPRC", "thr.", "sens.", "spec.", "prec.", "F1", "FN", "FP",
                  "ECE", "note"]
HEADER_TITLES = {"pos.": "positives", "thr.": "threshold (chosen on validation)", "sens.": "sensitivity (recall)",
                 "spec.": "specificity", "prec.": "precision (PPV)", "FN": "false negatives", "FP": "false positives",
                 "ECE": "expected calibration error (10 bins)"}


def _data_uri(path: Path) -> str:
    """The PNG at `path` as a base64 data URI, so the report needs no other file."""
    return png_data_url(path)


def _num(value: Any, digits: int = 3) -> str:
    """A table number: 'n/a' for None/NaN, an integer when digits is 0, else fixed-point."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, (int,)) or (isinstance(value, float) and value.is_integer() and digits == 0):
        return f"{int(value)}"
    return f"{float(value):.{digits}f}"


def _interval_cell(iv: dict[str, Any]) -> dict[str, Any]:
    """A metrics-table cell for a value with its CI, or 'n/a' with the reason as its tooltip."""
    if iv.get("value") is None:
        return {"text": "n/a", "cls": "na", "title": iv.get("reason") or ""}
    ci = f"[{iv['low']:.3f}, {iv['high']:.3f}]" if iv.get("low") is not None else "(no CI)"
    return {"text": f"{iv['value']:.3f}", "ci": ci, "title": iv.get("reason") or ""}


def _metric_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the metrics table: per finding, then macro/micro/normal highlighted."""
    out = []
    for r in rows:
        c = r.get("counts") or {}

        def cell(key: str, digits: int = 3) -> dict[str, Any]:
            text = _num(c.get(key), digits) if c else "—"
            return {"text": text, "cls": "na" if text == "n/a" else ""}

        note = r.get("note") or ""
        if r["auroc"].get("low") is None and r["auroc"].get("reason") and r["auroc"]["reason"] not in note:
            note = f"{note}; {r['auroc']['reason']}".strip("; ")
        cells = [
            {"text": r["name"]},
            {"text": str(r["n"])},
            {"text": str(r["positives"])},
            _interval_cell(r["auroc"]),
            _interval_cell(r["auprc"]),
            {"text": _num(r.get("threshold")) if r.get("threshold") is not None else "—"},
            cell("sensitivity"), cell("specificity"), cell("precision"), cell("f1"),
            cell("fn", 0), cell("fp", 0),
            {"text": _num(r.get("ece")) if r.get("ece") is not None else "—"},
            {"text": note, "cls": "note"},
        ]
        out.append({"cls": "finding" if r["kind"] == "finding" else "agg", "cells": cells})
    return out


def _data_table(manifest: dict[str, Any]) -> dict[str, Any]:
    """Counts per split, then positives per finding and split, from a prepared manifest."""
    labels = list(manifest["labels"])
    splits = [s for s in ("train", "val", "test") if s in manifest["splits"]] + [
        s for s in manifest["splits"] if s not in ("train", "val", "test")
    ]
    header = ["", *splits]
    rows = [["images", *[manifest["splits"][s]["count"] for s in splits]]]
    for j, name in enumerate(labels):
        rows.append([name, *[(manifest["splits"][s].get("positives") or [None] * len(labels))[j] for s in splits]])
    return {"header": header, "rows": rows}


def _sources_section(metrics: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The per-source metric tables of a merged dataset's evaluation, with the warning when most of a finding's
    positives come from one source (chestxray.data.source_mix), or None for a single-source run."""
    from chestxray.data.source_mix import manifest_composition, source_warnings

    by_source = metrics.get("by_source") or {}
    if not by_source:
        return None
    tables = []
    for name, summary in by_source.items():
        rows = [r for r in summary.get("rows", []) if r["kind"] != "finding" or r["n"]]
        tables.append({"name": name, "n_images": summary.get("n_images"), "n_patients": summary.get("n_patients"),
                       "rows": _metric_rows(rows)})
    warnings = source_warnings(manifest_composition(manifest)) if manifest else []
    return {"tables": tables, "warnings": warnings, "threshold_sources": metrics.get("threshold_sources")}


def _find_prepared(run: Path, metrics: dict[str, Any]) -> str | None:
    """The prepared folder: from the evaluation record, else the bundle card."""
    if metrics.get("prepared") and metrics["prepared"] != "None":
        return str(metrics["prepared"])
    try:
        return read_card(run / "bundle").get("prepared")
    except ModelError as exc:
        log.warning("report: no prepared folder recorded (%s)", exc)
        return None


def latest_explain_run(run: Path) -> Path | None:
    """The explain run folder (RUN/explain/<name>, or RUN/explain itself) whose scores.csv is the newest, if any."""
    root = run / "explain"
    found = [p.parent for p in (root / "scores.csv", *root.glob("*/scores.csv")) if p.is_file()]
    return max(found, key=lambda d: (d / "scores.csv").stat().st_mtime, default=None)


def _caption(row: pd.Series) -> str:
    """Overlay caption from a scores.csv row: id, split, finding, probability, threshold, outcome, method, scores."""
    parts = [str(row["image_id"]), *([f"{row['split']} split"] if _text(row.get("split")) else []), str(row["label"]),
             f"p={row['probability']:.2f}"]
    if pd.notna(row.get("threshold")):
        parts[-1] += f", threshold {row['threshold']:.2f}"
    if _text(row.get("outcome")):
        parts.append(str(row["outcome"]))
    parts.append(str(row["method"]))
    if row.get("box_cut") == 1:
        parts.append("box cut away by the crop (n/a)")
    elif row.get("empty_map") == 1:
        parts.append("empty map (n/a)")
    elif pd.notna(row.get("pointing_hit")):
        iou = next((c for c in row.index if str(c).startswith("iou_top")), None)
        parts.append(f"pointing {row['pointing_hit']:.2f}, {iou.replace('iou_top', 'IoU top ')}% {row[iou]:.2f}, "
                     f"energy in box {row['energy_in_box']:.2f}" if iou else f"pointing {row['pointing_hit']:.2f}")
    return " · ".join(parts)


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _explanations(run: Path) -> tuple[list[dict[str, str]], str]:
    """Overlays of the latest explain run only (up to MAX_EXPLANATIONS, taken in turn by outcome) and a line saying
    which run, split, method and selection they come from."""
    folder = latest_explain_run(run)
    if folder is None:
        return [], ""
    table = read_csv(folder / "scores.csv", dtype={"image_id": str, "split": str, "outcome": str})
    coverage = coverage_text(table_from_scores(table), str(table["method"].iloc[0]) if len(table) else "gradcam")
    table = table[[(folder / Path(str(p)).name).is_file() for p in table["overlay"]]] if len(table) else table
    if table.empty:
        return [], ""
    table = table.fillna({"outcome": "", "split": ""})
    table["turn"] = table.groupby("outcome").cumcount()
    table = table.sort_values("turn", kind="stable").head(MAX_EXPLANATIONS)
    items = [{"src": _data_uri(folder / Path(str(r["overlay"])).name), "caption": _caption(r)} for _, r in table.iterrows()]
    settings_path = folder / "settings.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    facts = [f"run {folder.relative_to(run)}", f"method {settings.get('method') or table['method'].iloc[0]}"]
    facts += [f"{k} {settings[k]}" for k in ("split", "selection", "created") if settings.get(k)]
    tally = table["outcome"].replace("", None).dropna().value_counts()
    shown = f"{len(items)} shown" + (f" ({', '.join(f'{v} {k}' for k, v in tally.items())})" if len(tally) else "")
    against = int((table.get("map_shown", pd.Series(dtype=str)) == "evidence against").sum())
    words = f" Coverage: {coverage}; {against} shown negative(s) drawn as evidence against. {MEANING}" if coverage else ""
    return items, "Explain " + "; ".join(facts) + f"; {shown}. Earlier explain runs are not mixed in." + words


def _model_card(run: Path) -> dict[str, Any] | None:
    """The bundle's model card for the report: intended use, population in a sentence, limits, and per finding
    whether it is validated and its quality in words (None for a bundle written before model cards)."""
    from chestxray.evaluation.validity import quality_text

    try:
        card = read_card(run / "bundle")
    except ChestXrayError:
        return None
    block = card.get("model_card")
    if not block:
        return None
    population = block.get("population") or {}
    images = ", ".join(f"{k} {v}" for k, v in (population.get("images") or {}).items())
    collection = population.get("collection") or {}
    words = [f"{population.get('source', 'unknown source')}: {images} images" if images else "not recorded"]
    if collection.get("patients"):
        words.append(f"{collection['patients']} patients in the collection")
    if collection.get("sex"):
        words.append("sex " + ", ".join(f"{k} {v}" for k, v in collection["sex"].items()))
    if collection.get("age"):
        age = collection["age"]
        words.append(f"age median {age['median']:g} (IQR {age['q1']:g}-{age['q3']:g}, range {age['min']:g}-"
                     f"{age['max']:g})")
    findings = [{"name": name, "validated": "yes" if f.get("validated") else f.get("why") or "no",
                 "quality": quality_text(f)} for name, f in (card.get("findings") or {}).items()]
    return {"intended_use": block.get("intended_use", ""), "not_intended": block.get("not_intended", ""),
            "population": "; ".join(words), "limits": block.get("limits", []), "findings": findings}


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (or `out`) from RUN/eval, RUN/config.yaml, the prepared manifest and the latest explain run."""
    run = Path(run_dir)
    eval_dir = run / EVAL_DIR
    metrics_path = eval_dir / "metrics.json"
    if not metrics_path.exists():
        raise DataError(f"{run}: no {EVAL_DIR}/metrics.json; run `chestxray evaluate {run}` first")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{metrics_path}: not valid JSON ({exc}); run `chestxray evaluate {run}` again") from exc

    multiclass = multiclass_context(metrics)
    captions = {**CAPTIONS, **(multiclass["captions"] if multiclass else {})}
    plots = {}
    for key, name in PLOTS.items():
        path = eval_dir / name
        plots[key] = {"src": _data_uri(path), "caption": captions[key]} if path.exists() else None
    explanations, explain_info = _explanations(run)
    audit_html = render_audit_section(run_audit_dir(run), run)

    prepared = _find_prepared(run, metrics)
    data_table, data_missing, manifest = None, "", {}
    if not prepared:
        data_missing = "Prepared dataset manifest not found (no path recorded)."
    else:
        try:
            manifest = read_manifest(prepared)
            data_table = _data_table(manifest)
        except DataError as exc:
            data_missing = f"Prepared dataset manifest not usable: {exc}"

    config_path = run / "config.yaml"
    rows = metrics.get("rows", [])
    by_kind = {r["kind"]: r for r in rows if r["kind"] != "finding"}
    head = by_kind.get("macro") or (rows[0] if rows else None)
    cards = []
    if head is not None:
        iv = head["auroc"]
        value = f"{iv['value']:.3f}" if iv.get("value") is not None else "n/a"
        ci = f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv.get("low") is not None else ""
        cards.append({"key": f"{'macro ' if 'macro' in by_kind else ''}AUROC{ci}", "value": value})
    if "normal" in by_kind and by_kind["normal"]["auroc"].get("value") is not None:
        cards.append({"key": "normal (No Finding) AUROC", "value": f"{by_kind['normal']['auroc']['value']:.3f}"})
    cards += multiclass["cards"] if multiclass else []
    cards += [{"key": "images evaluated", "value": metrics.get("n_images", "?")},
              {"key": "patients", "value": metrics.get("n_patients", "?")},
              {"key": "labels", "value": len(metrics.get("labels", []))}]
    boot = metrics.get("bootstrap", {})
    model_card = _model_card(run)
    env = Environment(loader=PackageLoader("chestxray.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        title=f"Run {run.resolve().name}",
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=chestxray.__version__,
        run_dir=str(run),
        split=metrics.get("split"),
        n_images=metrics.get("n_images"),
        n_patients=metrics.get("n_patients"),
        threshold_method=metrics.get("threshold_method"),
        multiclass=multiclass,
        tta=metrics.get("tta", "none"),
        cards=cards,
        ci_text=f"{boot.get('ci', 0.95):.0%} percentile bootstrap, {boot.get('replicates', '?')} replicates "
                f"resampling {boot.get('unit', 'patient')}s (seed {boot.get('seed', 0)})"
                + (f"; {boot['scheme']}; macro: {boot['macro']}" if "scheme" in boot else "")
                + (f"; {boot['rule']}" if "rule" in boot else ""),
        normal_score=metrics.get("normal_score", "1 - max(p)"),
        prepared=prepared,
        image_size=manifest.get("image_size"),
        resize=manifest.get("resize"),
        data_table=data_table,
        data_missing=data_missing,
        plots=plots,
        plot_order=PLOT_ORDER,
        metrics_header=METRICS_HEADER,
        header_titles=HEADER_TITLES,
        metrics_rows=_metric_rows(rows),
        explanations=explanations,
        explain_info=explain_info,
        audit_html=audit_html,
        model_card=model_card,
        sources=_sources_section(metrics, manifest),
        config_text=config_path.read_text(encoding="utf-8") if config_path.exists() else "",
    )
    target = Path(out) if out is not None else run / REPORT
    with folder_lock(run, "report"):  # one writer: a killed report's temporary file is then safe to remove
        remove_leftovers(target)
        write_text(target, html)
    log.info("wrote %s (%d plots, %d explanations)", target, sum(v is not None for v in plots.values()), len(explanations))
    return target

