"""`chestxray calibrate`: a site profile for a new hospital, fitted on its own images, the bundle left untouched.

With labels (the default): the site's patients are split (seeded) into a labelled sample of about N images and
held-out images. On the sample: a calibration map chosen by chestxray.evaluation.calibration's rule, thresholds
re-chosen by the run's own method (or --threshold-method), a conformal bound on missed findings (MAPIE) and, for
binary / multi-class tasks, class-conditional prediction sets (crepes). On the held-out images: AUROC, ECE and Brier
with patient-bootstrap intervals and sensitivity / specificity, before (bundle probabilities and thresholds) and
after (the site's), reliability diagrams, and the conformal bound's achieved miss rate and set sizes.

Without labels (--labelled 0): the bundle's probabilities are first recalibrated on its own validation split, then
the site's prevalence is estimated by EM (chestxray.evaluation.prevalence) with a patient-bootstrap interval and the
probabilities are moved to it. The thresholds are carried through the same increasing maps, so decisions (and
sensitivity / specificity) do not change — under a pure prevalence shift they should not; only the probabilities
and what they mean for a patient do.

Everything goes into OUT (normally RUN/sites/NAME), written as a whole: site.json (the profile predict, serve and
export read with --site NAME), report.json, summary.csv, predictions.csv, reliability_before.png and
reliability_after.png.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data.tasks import is_multiclass
from chestxray.errors import ConfigError, DataError
from chestxray.evaluation import plots
from chestxray.evaluation.calibration import MONOTONE, calibration_scores, choose_map
from chestxray.evaluation.conformal import (
    class_probabilities,
    class_sets,
    evaluate_class_sets,
    evaluate_recall_control,
    fit_class_sets,
    fit_recall_control,
)
from chestxray.evaluation.bootstrap import patient_codes
from chestxray.evaluation.metrics import summarize
from chestxray.evaluation.sample_rule import MIN_PATIENTS, class_patients, passes
from chestxray.evaluation.prevalence import estimate_prevalence, prior_step
from chestxray.evaluation.site_data import pick_labelled, score_site
from chestxray.evaluation.thresholds import choose_thresholds, parse_method
from chestxray.files import atomic_folder, write_csv, write_json
from chestxray.inference.site import SiteProfile, apply_steps, bundle_identity, save_site

log = logging.getLogger(__name__)


@dataclass
class SiteResult:
    """Where the profile went, the profile, everything measured (report.json) and a few lines to print."""

    out_dir: Path
    profile: SiteProfile
    report: dict[str, Any]
    lines: list[str] = field(default_factory=list)


def _method(card: dict[str, Any], requested: str | None) -> str:
    """The threshold method to re-choose with: the requested one, else the run's own (card 'youden on val')."""
    if requested:
        return str(parse_method(requested))
    stored = str(card.get("threshold_method") or "youden").split(" on ")[0]
    try:
        return str(parse_method(stored))
    except ConfigError:
        return "youden"


def _arrays(frame: pd.DataFrame, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return (frame[labels].to_numpy().astype(int), frame[[f"p_{x}" for x in labels]].to_numpy(float),
            frame["patient_id"].astype(str).tolist())


def _class_names(labels: list[str], multiclass: bool) -> list[str]:
    return labels if multiclass else [f"no {labels[0]}", labels[0]]


def _classes(y: np.ndarray, multiclass: bool) -> np.ndarray:
    return y.argmax(1) if multiclass else y[:, 0]


def _interval(iv: Any) -> dict[str, Any]:
    return {"value": iv.value, "low": iv.low, "high": iv.high, "note": iv.reason or ""}


def _rows(y: np.ndarray, raw: np.ndarray, site: np.ndarray, labels: list[str], patients: list[str],
          before_thr: dict[str, float], after_thr: dict[str, float], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per label on held-out images: AUROC, ECE, Brier with intervals and sensitivity / specificity, before / after."""
    s_before = summarize(y, raw, labels, patients, before_thr or None, n_boot=n_boot, seed=seed)
    s_after = summarize(y, site, labels, patients, after_thr or None, n_boot=n_boot, seed=seed)
    rows = []
    for j, name in enumerate(labels):
        row: dict[str, Any] = {"label": name, "images": int(len(y)), "positives": int(y[:, j].sum())}
        for tag, summary, probs, thr in (("before", s_before, raw, before_thr), ("after", s_after, site, after_thr)):
            fm = summary.row(name)
            cal = calibration_scores(y[:, j], probs[:, j], patients, n_boot=n_boot, seed=seed)
            row[tag] = {"auroc": _interval(fm.auroc), "ece": _interval(cal.ece), "brier": _interval(cal.brier),
                        "threshold": thr.get(name) if thr else None}
            if fm.counts is not None:
                c = fm.counts
                row[tag].update(sensitivity=c.sensitivity, specificity=c.specificity, tp=c.tp, fn=c.fn, fp=c.fp,
                                tn=c.tn)
        rows.append(row)
    return rows


def _summary_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    flat = []
    for row in rows:
        for tag in ("before", "after"):
            r = row[tag]
            flat.append({"label": row["label"], "when": tag, "images": row["images"], "positives": row["positives"],
                         **{f"{m}{s}": r[m][k] for m in ("auroc", "ece", "brier")
                            for s, k in (("", "value"), ("_low", "low"), ("_high", "high"))},
                         **{k: r.get(k) for k in ("threshold", "sensitivity", "specificity", "tp", "fn", "fp", "tn")}})
    return pd.DataFrame(flat)


def _site_thresholds(y: np.ndarray, q: np.ndarray, patients: list[str], labels: list[str], method: str,
                     steps: list[dict], bundle_thr: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Thresholds re-chosen on the sample's calibrated probabilities; a label with fewer than MIN_PATIENTS
    positive or negative patients keeps the bundle's threshold carried through the map (the evaluation's minimum-
    sample rule: a handful of patients cannot place an operating point). Returns them and the labels kept."""
    chosen = choose_thresholds(y, q, labels, method)
    codes, n_pat = patient_codes(patients)
    kept = []
    for j, name in enumerate(labels):
        if not passes(*class_patients(y[:, j], codes, n_pat)) and name in bundle_thr:
            probs = np.array([[bundle_thr.get(x, 0.5) for x in labels]])
            chosen[name] = float(apply_steps(steps, probs, labels)[0, j])
            kept.append(name)
    return chosen, kept


def _labelled(bundle: Any, frame: pd.DataFrame, labels: list[str], labelled: int | None, alpha: float,
              method: str, seed: int, n_boot: int) -> tuple[list[dict], dict, dict, dict]:
    """Fit on the labelled sample, measure on the held-out images: (steps, thresholds, conformal, report)."""
    card, multi = bundle.card, is_multiclass(bundle.card.get("task"))
    mask = pick_labelled(frame, labels, labelled, seed)
    cal, held = frame[mask].reset_index(drop=True), frame[~mask].reset_index(drop=True)
    y_cal, p_cal, pat_cal = _arrays(cal, labels)
    if len(np.unique(pat_cal)) < 2:
        raise DataError(f"the labelled sample holds {len(cal)} image(s) of {len(set(pat_cal))} patient(s); "
                        "pass a larger --labelled")
    choice = choose_map(y_cal, p_cal, labels, pat_cal, multiclass=multi)
    steps = [choice.step]
    q_cal = apply_steps(steps, p_cal, labels)
    thresholds, kept = ({}, []) if multi else _site_thresholds(y_cal, q_cal, pat_cal, labels, method, steps,
                                                               card.get("thresholds") or {})
    conformal: dict[str, Any] = {}
    if not multi:
        conformal["recall"] = fit_recall_control(y_cal, q_cal, alpha)
    if multi or len(labels) == 1:
        names = _class_names(labels, multi)
        sets = fit_class_sets(_classes(y_cal, multi), class_probabilities(q_cal, multi), alpha, names)
        sets.pop("_crepes")
        conformal["sets"] = sets
    report: dict[str, Any] = {
        "split": {"labelled_images": int(mask.sum()), "labelled_patients": int(len(set(pat_cal))),
                  "held_out_images": int(len(held)), "held_out_patients": int(held["patient_id"].nunique()),
                  "rule": "whole patients, seeded, interleaved by label pattern"},
        "calibration": {"method": choice.method, "rule": choice.rule, "folds": choice.folds,
                        "cross_validated": choice.cv},
        "threshold_method": f"{method} on the site's labelled sample" if not multi else "argmax",
    }
    if kept:
        report["threshold_method"] += (f"; kept the bundle's threshold (carried through the map) for {', '.join(kept)}: "
                                       f"fewer than {MIN_PATIENTS} positive or negative patients in the sample")
    if len(held):
        y_h, p_h, pat_h = _arrays(held, labels)
        q_h = apply_steps(steps, p_h, labels)
        report["held_out"] = _rows(y_h, p_h, q_h, labels, pat_h, card.get("thresholds") or {}, thresholds,
                                   n_boot, seed)
        if "recall" in conformal:
            report["conformal_recall_held_out"] = evaluate_recall_control(y_h, q_h, conformal["recall"]["threshold"])
        if "sets" in conformal:
            names = conformal["sets"]["classes"]
            probs = class_probabilities(q_h, multi)
            report["conformal_sets_held_out"] = evaluate_class_sets(_classes(y_h, multi),
                                                                    class_sets(probs, conformal["sets"]), names)
        report["_held"] = (y_h, p_h, q_h, held)
    else:
        log.warning("every site image is in the labelled sample: nothing is held out to check the result on")
    return steps, thresholds, conformal, report


def _unlabelled(bundle: Any, frame: pd.DataFrame, labels: list[str], tta: str, seed: int,
                n_boot: int) -> tuple[list[dict], dict, dict]:
    """Source calibration on the bundle's validation split, then EM prevalence on the site's images."""
    from chestxray.inference.predict import predict_split

    card, multi = bundle.card, is_multiclass(bundle.card.get("task"))
    prepared = card.get("prepared")
    if not prepared or not (Path(prepared) / "manifest.json").is_file():
        raise DataError(f"the bundle's validation data ({prepared}) is not here; the label-free estimate needs it to "
                        "calibrate the probabilities first. Pass labelled site images instead (--labelled N)")
    val = predict_split(bundle, prepared, "val", tta=tta)
    y_val, p_val, pat_val = _arrays(val, labels)
    choice = choose_map(y_val, p_val, labels, pat_val, candidates=None if multi else MONOTONE, multiclass=multi)
    source = y_val.mean(0)
    _, p_site, pat_site = _arrays(frame, labels)
    q_site = apply_steps([choice.step], p_site, labels)
    est = estimate_prevalence(q_site, source, labels, pat_site, multiclass=multi, n_boot=min(n_boot, 500), seed=seed)
    steps = [choice.step, prior_step(source, est.estimate, labels, multi)]
    before = card.get("thresholds") or {}
    thresholds = {}
    if before and not multi:  # carried through the increasing maps: the same decisions, site-scaled probabilities
        mapped = apply_steps(steps, np.array([[before[x] for x in labels]]), labels)[0]
        thresholds = {x: float(v) for x, v in zip(labels, mapped)}
    report = {"prevalence": est.to_dict(),
              "source_calibration": {"method": choice.method, "rule": choice.rule, "cross_validated": choice.cv,
                                     "on": f"{prepared} (val, {len(val)} images)"},
              "site_label_columns_prevalence": frame[labels].to_numpy().mean(0).tolist(),
              "threshold_method": "the bundle's thresholds carried through the maps (decisions unchanged)"}
    return steps, thresholds, report


def _unlike_training(frame: pd.DataFrame) -> dict[str, Any] | None:
    """How many site images the bundle's OOD score marks as unlike its training images (None: no score)."""
    if "unusual" not in frame:
        return None
    marked = frame["unusual"].fillna(0).astype(int)
    return {"images": int(len(frame)), "unusual": int(marked.sum()), "share": float(marked.mean()),
            "median_in_distribution": float(frame["in_distribution"].median())}


def calibrate_site(model: str | Path, data: str | Path, out: str | Path, labelled: int | None = None,
                   alpha: float = 0.05, threshold_method: str | None = None, tta: str | None = None, seed: int = 0,
                   n_boot: int = 1000, batch_size: int = 64) -> SiteResult:
    """Fit a site profile for the bundle at `model` (run or bundle folder) on the site `data` and write OUT."""
    from chestxray.inference.predict import as_bundle
    from chestxray.inference.stream import threshold_tta

    if labelled is not None and labelled < 0:
        raise ConfigError(f"--labelled must be 0 (no labels: estimate the prevalence) or more; got {labelled}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--miss must be a share in (0, 1), e.g. 0.05; got {alpha}")
    bundle = as_bundle(model)
    card, labels = bundle.card, list(bundle.labels)
    tta = threshold_tta(card, tta)
    method = _method(card, threshold_method)
    frame = score_site(bundle, data, tta, batch_size=batch_size)
    out = Path(out)
    base = {"model": str(bundle.path), "data": str(data), "images": int(len(frame)),
            "patients": int(frame["patient_id"].nunique()), "tta": tta, "seed": seed, "n_boot": n_boot,
            "home_metrics": card.get("metrics"), "unlike_training": _unlike_training(frame)}
    if labelled == 0:
        steps, thresholds, report = _unlabelled(bundle, frame, labels, tta, seed, n_boot)
        conformal, mode, held = None, "unlabelled", None
        tmethod = report["threshold_method"]
    else:
        steps, thresholds, conformal, report = _labelled(bundle, frame, labels, labelled, alpha, method, seed, n_boot)
        mode, held = "labelled", report.pop("_held", None)
        tmethod = report["threshold_method"]
    report = {**base, "mode": mode, **report, "conformal": conformal}
    profile = SiteProfile(
        name=out.name, labels=labels, task=str(card.get("task") or "multilabel"), mode=mode, steps=steps,
        thresholds=thresholds or None, threshold_method=tmethod, bundle=bundle_identity(card), tta=tta,
        calibration=report.get("calibration") or report.get("source_calibration") or {}, conformal=conformal,
        prevalence=report.get("prevalence"),
        data={k: report[k] for k in ("data", "images", "patients")} | ({"split": report["split"]}
                                                                      if "split" in report else {}))
    with atomic_folder(out) as tmp:
        save_site(profile, tmp)
        write_json(tmp / "report.json", report)
        _write_tables(tmp, frame, labels, steps, report, held)
    return SiteResult(out, profile, report)


def _write_tables(out: Path, frame: pd.DataFrame, labels: list[str], steps: list[dict], report: dict,
                  held: Any) -> None:
    """summary.csv, predictions.csv and the before / after reliability diagrams."""
    y, p, _ = _arrays(frame, labels)
    q = apply_steps(steps, p, labels)
    preds = frame[["image_id", "patient_id", *labels, *[c for c in ("in_distribution", "unusual") if c in frame]]].copy()
    preds[[f"p_{x}" for x in labels]] = p
    preds[[f"site_p_{x}" for x in labels]] = q
    write_csv(out / "predictions.csv", preds)
    if report.get("held_out"):
        write_csv(out / "summary.csv", _summary_frame(report["held_out"]))
    if held is not None:  # the diagrams are drawn on images the maps were not fitted on
        y, p, q = held[0], held[1], held[2]
    elif report["mode"] == "unlabelled" and not (y.min(0) < y.max(0)).any():
        return  # no labels to draw a reliability diagram with
    what = "held-out site images" if held is not None else "site images"
    plots.plot_calibration(y, p, labels, out / "reliability_before.png", title=f"Before: bundle probabilities, {what}")
    plots.plot_calibration(y, q, labels, out / "reliability_after.png", title=f"After: site probabilities, {what}")
