"""`chestxray calibrate`: a site profile for a new hospital (recalibration, thresholds, conformal bound)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from chestxray.cli import app
from chestxray.cli.common import console, friendly


def _iv(d: dict[str, Any]) -> str:
    """'0.081 [0.052, 0.113]', or the value and its note when there is no interval."""
    if d["value"] is None:
        return "n/a"
    text = f"{d['value']:.3f}"
    return text + (f" [{d['low']:.3f}, {d['high']:.3f}]" if d["low"] is not None else " (no CI)")


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _labelled_lines(report: dict[str, Any]) -> list[str]:
    s = report["split"]
    lines = [f"labelled sample {s['labelled_images']} images ({s['labelled_patients']} patients); held out "
             f"{s['held_out_images']} images ({s['held_out_patients']} patients)",
             f"calibration: {report['calibration']['method']} (rule: {report['calibration']['rule']})",
             f"thresholds: {report['threshold_method']}"]
    for row in report.get("held_out") or []:
        b, a = row["before"], row["after"]
        lines.append(f"{row['label']} on held-out ({row['positives']} positive of {row['images']}): AUROC {_iv(b['auroc'])}")
        lines.append(f"  ECE   before {_iv(b['ece'])}  after {_iv(a['ece'])}")
        lines.append(f"  Brier before {_iv(b['brier'])}  after {_iv(a['brier'])}")
        if "sensitivity" in b or "sensitivity" in a:
            lines.append(f"  threshold {_num(b.get('threshold'))} (bundle): sens {_num(b.get('sensitivity'))} spec "
                         f"{_num(b.get('specificity'))} | {_num(a.get('threshold'))} (site): sens "
                         f"{_num(a.get('sensitivity'))} spec {_num(a.get('specificity'))}")
    conf = report.get("conformal") or {}
    if "recall" in conf:
        fit, held = conf["recall"], report.get("conformal_recall_held_out")
        text = (f"conformal: miss at most {fit['alpha']:g} of an image's findings -> p > {fit['threshold']:.3f} "
                f"(fitted on {fit['n_calibration']} images with a finding; {fit['n_no_finding_left_out']} without one "
                "left out)")
        lines.append(text + (f"; {fit['note']}" if fit.get("note") else ""))
        if held and held["miss_rate"] is not None:
            nf = held["no_finding_empty_set_share"]
            lines.append(f"  held-out: miss rate {held['miss_rate']:.3f} on {held['n_with_finding']} images with a "
                         f"finding, mean set size {held['mean_set_size']:.2f}"
                         + (f"; {held['n_no_finding']} No Finding images, {nf:.0%} with an empty set" if nf is not None
                            else ""))
    if "sets" in conf and report.get("conformal_sets_held_out"):
        held = report["conformal_sets_held_out"]
        per = ", ".join(f"{k} {_num(v)}" for k, v in held["coverage_per_class"].items())
        lines.append(f"prediction sets (class-conditional, {1 - conf['sets']['alpha']:g}): held-out coverage "
                     f"{_num(held['coverage'])} ({per}); set sizes {held['set_size_counts']}")
        always = [k for k, v in conf["sets"]["cutoffs"].items() if v is None]
        if always:
            lines.append(f"  always in the set (fewer than {conf['sets']['min_per_class']} calibration images): "
                         + ", ".join(f"{k} ({conf['sets']['n_per_class'][k]})" for k in always))
    return lines


def _unlabelled_lines(report: dict[str, Any]) -> list[str]:
    prev = report["prevalence"]
    lines = [f"source calibration on the bundle's val split: {report['source_calibration']['method']}"]
    for j, name in enumerate(prev["labels"]):
        lines.append(f"{name}: prevalence at the site {prev['estimate'][j]:.3f} [{prev['low'][j]:.3f}, "
                     f"{prev['high'][j]:.3f}] (EM, {prev['n_boot']} patient-bootstrap replicates); training "
                     f"(val) {prev['source'][j]:.3f}; mean probability {prev['mean_probability'][j]:.3f}")
    lines.append(f"thresholds: {report['threshold_method']}")
    return lines


@app.command(help="Fit a site profile for a new hospital without changing the bundle: recalibrate the probabilities "
             "on a small labelled sample of the site (temperature, Platt or isotonic, chosen by cross-validated "
             "log-loss preferring the fewest parameters), re-choose the thresholds, bound the missed findings "
             "with conformal risk control (MAPIE) and check all of it on the site's held-out images. With "
             "--labelled 0 (no labels): estimate the site's prevalence by EM and adjust the probabilities. "
             "predict, serve and export use the profile with --site NAME."
             "\n\nExample: chestxray calibrate runs/dn121 --data runs/site-catalog --labelled 100 --out "
             "runs/dn121/sites/hospital-b"
             "\n\nExample: chestxray calibrate runs/dn121 --data runs/site-catalog --labelled 0 --out "
             "runs/dn121/sites/hospital-b-unlabelled")
@friendly
def calibrate(
    run: Path = typer.Argument(..., help="Run folder (holding bundle/) or bundle folder."),
    data: Path = typer.Option(..., "--data", help="The site's images: a catalog folder or a PREPARED folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the site profile, normally RUN/sites/NAME."),
    labelled: int = typer.Option(None, "--labelled", help="Images (whole patients) in the labelled sample; the "
                                 "rest are held out to check the result. Default half; 0: no labels (EM)."),
    miss: float = typer.Option(0.05, "--miss", help="Conformal bound: the share of an image's findings the site "
                               "set may miss (0.05 = at most 5 %)."),
    threshold_method: str = typer.Option(None, "--threshold-method", help="youden, f1 or sensitivity:0.9 "
                                         "(default: the run's own method)."),
    tta: str = typer.Option(None, "--tta", help="Test-time augmentation (default: the one the bundle's thresholds "
                            "were chosen with)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the labelled / held-out split and the bootstrap."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Patient-bootstrap replicates for the intervals."),
) -> None:
    from chestxray.cli import checks

    checks.model_source(run)
    checks.tta(tta)
    if threshold_method:
        checks.threshold_method(threshold_method)
    checks.at_least("--miss", miss, 1e-6, 0.999999)
    checks.at_least("--n-boot", n_boot, 10)
    if labelled is not None:
        checks.at_least("--labelled", labelled, 0)
    checks.site_data(data)
    from chestxray.evaluation.site_calibration import calibrate_site

    result = calibrate_site(run, data, out, labelled=labelled, alpha=miss, threshold_method=threshold_method,
                            tta=tta, seed=seed, n_boot=n_boot)
    report = result.report
    console.print(f"site {result.profile.name!r}: {report['images']} images of {report['patients']} patients from "
                  f"{data}", highlight=False, soft_wrap=True)
    lines = _labelled_lines(report) if report["mode"] == "labelled" else _unlabelled_lines(report)
    unlike = report.get("unlike_training")
    if unlike:
        lines.append(f"unlike the training images (in-distribution score at or below the model's rate): "
                     f"{unlike['unusual']} of {unlike['images']} site images ({unlike['share']:.0%})")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"wrote {result.out_dir} (site.json, report.json, summary.csv, reliability_*.png); use it with "
                  f"--site {result.profile.name}; the bundle is unchanged", highlight=False, soft_wrap=True)
