"""Calibration of the toolkit's tests and intervals by simulation (the figures in docs/statistics.md).

Data where the truth is known (chestxray.evaluation.simulate): patients with several images whose scores share a
patient effect (within-patient error correlation rho), findings with known population AUROCs, two equally good
models unless said otherwise. Each block prints what it measures and writes one row per figure to
bench/results/statistics-<hostname>.csv (block, setting, method, datasets, value). No timing is asserted; seeds are
fixed, so a rerun prints the same figures (floating point aside).

  tests      rejection rate at p < 0.05 of equal models: DeLong's image-level test vs Obuchowski's clustered test,
             100 patients with 1-6 images (rho 0, 0.5, 0.8) and one image per patient
  boundary   the same (rho 0.5, 80 patients with 1-6 images) with exactly 1, 3, 5, 10, 20 positive patients:
             what the minimum-sample rule keeps out (it withholds the test below 10)
  intervals  coverage of the per-finding 95 % patient-bootstrap interval by positive / negative patient counts,
             clusters of 1-6 images and NIH-like clusters (no minimum applied, to show where it is needed)
  macro      coverage of the macro interval at NIH-sample sizes (14 findings, NIH patient prevalences, NIH-like
             clusters): the old interval over every defined finding vs the rule's macro / macro_eligible
  shortcuts  how often the shortcut check flags a patient-constant acquisition feature unrelated to the label:
             the image-level band (Mann-Whitney) vs the patient-level null

Run: nice -n 19 .venv/bin/python bench/bench_statistics.py [--quick] [--only tests,macro]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.labels import NIH14
from chestxray.evaluation import statistics as st
from chestxray.evaluation.bootstrap import SortedTask, patient_property, patient_strata, stratified_patient_counts
from chestxray.evaluation.metrics import MACRO_ELIGIBLE, summarize
from chestxray.evaluation.sample_rule import MIN_PATIENTS
from chestxray.evaluation.simulate import (
    NIH_PATIENT_PREVALENCE,
    nih_like_images,
    signal_for,
    simulate,
    true_auroc,
)

HERE = Path(__file__).resolve().parent
ROWS: list[dict] = []


def record(block: str, setting: str, method: str, datasets: int, value: float) -> None:
    """Print one figure and keep it for the CSV."""
    ROWS.append({"block": block, "setting": setting, "method": method, "datasets": datasets, "value": value})
    print(f"{block:10s} {setting:44s} {method:34s} n={datasets:5d}  {value:.3f}", flush=True)


def tests(reps: int) -> None:
    """Equal models: how often each test says p < 0.05."""
    for name, rho, max_images in (("1-6 images, rho 0", 0.0, 6), ("1-6 images, rho 0.5", 0.5, 6),
                                  ("1-6 images, rho 0.8", 0.8, 6), ("1 image per patient", 0.0, 1)):
        rng = np.random.default_rng(1)
        delong = clustered = 0
        for _ in range(reps):
            sim = simulate(rng, rng.integers(1, max_images + 1, 100), prevalence=0.3, signal=1.0, rho=rho)
            y, a, b = sim.y[:, 0], sim.scores[0, :, 0], sim.scores[1, :, 0]
            delong += st.delong_test(y, a, b).p < 0.05
            clustered += st.clustered_test(y, a, b, sim.codes).p < 0.05
        record("tests", f"100 patients, {name}", "DeLong (images)", reps, delong / reps)
        record("tests", f"100 patients, {name}", "Obuchowski (patients)", reps, clustered / reps)


def boundary(reps: int) -> None:
    """Equal models, exactly k positive patients among 80 (1-6 images each, rho 0.5)."""
    for k in (1, 3, 5, 10, 20):
        rng = np.random.default_rng(k)
        delong = clustered = 0
        for _ in range(reps):
            sim = simulate(rng, rng.integers(1, 7, 80), prevalence=0.0, rho=0.5)
            patients = rng.choice(80, k, replace=False)
            y = (np.isin(sim.codes, patients) & (rng.random(sim.codes.size) < 0.8)).astype(np.uint8)
            y[np.searchsorted(sim.codes, patients)] = 1  # each of the k patients keeps a positive (first) image
            a, b = sim.scores[0, :, 0] + y, sim.scores[1, :, 0] + y
            delong += st.delong_test(y, a, b).p < 0.05
            clustered += st.clustered_test(y, a, b, sim.codes).p < 0.05 if k >= 2 else 0
        record("boundary", f"{k} positive patients of 80", "DeLong (images)", reps, delong / reps)
        if k >= 2:
            record("boundary", f"{k} positive patients of 80", "Obuchowski (patients)", reps, clustered / reps)


def _interval_hits(y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_pat: int, auc: float,
                   rng: np.random.Generator, n_boot: int) -> bool:
    """Whether the stratified patient-bootstrap percentile interval of one finding holds the true AUROC."""
    props = np.stack([patient_property(y == v, codes, n_pat) for v in (0, 1)], 1)
    counts = stratified_patient_counts(patient_strata(props), n_boot, rng)
    reps = SortedTask(y, s, codes).replicates(counts)[0]
    low, high = np.nanpercentile(reps, [2.5, 97.5])
    return bool(low <= auc <= high)


def intervals(reps: int, n_boot: int) -> None:
    """Per-finding interval coverage by the number of positive (or negative) patients."""
    auc = 0.75
    for clusters in ("1-6 images", "NIH-like"):
        for side, k in (("negative", 3), ("negative", 10), ("positive", 3), ("positive", 10), ("positive", 20)):
            rng = np.random.default_rng(k)
            hits = 0
            for _ in range(reps):
                n = 80
                images = rng.integers(1, 7, n) if clusters == "1-6 images" else nih_like_images(rng, n)
                sim = simulate(rng, images, prevalence=0.0, signal=signal_for(auc), rho=0.5, models=1)
                chosen = np.isin(sim.codes, rng.choice(n, k, replace=False))
                y = chosen if side == "positive" else ~chosen  # exactly k patients on the short side
                s = sim.scores[0, :, 0] + signal_for(auc) * y
                hits += _interval_hits(y, s, sim.codes, n, auc, rng, n_boot)
            record("intervals", f"{clusters}, {k} {side} patients of 80", "percentile patient bootstrap", reps,
                   hits / reps)


def macro(reps: int, n_boot: int) -> None:
    """Macro interval coverage at NIH-sample sizes: all defined findings (old) vs the minimum-sample rule."""
    labels = list(NIH14)
    aurocs = np.linspace(0.6, 0.8, len(labels))
    for n_patients in (45, 100, 226):
        rng = np.random.default_rng(n_patients)
        old, new, withheld = [], [], 0
        for r in range(reps):
            sim = simulate(rng, nih_like_images(rng, n_patients), np.array(NIH_PATIENT_PREVALENCE),
                           signal_for(aurocs), rho=0.5, models=1)
            probs, ids = 1 / (1 + np.exp(-sim.scores[0])), sim.codes.tolist()
            defined = [j for j in range(len(labels)) if 0 < sim.y[:, j].sum() < len(sim.y)]
            iv = summarize(sim.y, probs, labels, ids, n_boot=n_boot, seed=r, min_patients=0).row("macro").auroc
            old.append(iv.low <= aurocs[defined].mean() <= iv.high)
            rows = {row.name: row for row in summarize(sim.y, probs, labels, ids, n_boot=n_boot, seed=r).rows}
            eligible = [j for j in defined if min(rows[labels[j]].positive_patients,
                                                  rows[labels[j]].negative_patients) >= MIN_PATIENTS]
            given = False
            for name, cols in (("macro", defined), (MACRO_ELIGIBLE, eligible)):
                if name in rows and rows[name].auroc.low is not None:
                    new.append(rows[name].auroc.low <= aurocs[cols].mean() <= rows[name].auroc.high)
                    given = True
            withheld += not given
        setting = f"{n_patients} patients, NIH-like, 14 findings"
        record("macro", setting, "old: all defined findings", reps, float(np.mean(old)))
        record("macro", setting, "rule: macro or macro_eligible", len(new), float(np.mean(new)) if new else np.nan)
        record("macro", setting, "rule: share with no interval", reps, withheld / reps)


def shortcuts(reps: int) -> None:
    """The shortcut check on a patient-constant feature unrelated to the label."""
    sys.path.insert(0, str(HERE.parent))
    from chestxray.data.shortcuts import COMBINED, null_sd, shortcut_check
    from tests.data.test_shortcuts import _clustered_catalog

    rng = np.random.default_rng(0)
    flagged = old = checks = 0
    for _ in range(reps):
        catalog, features = _clustered_catalog(rng)
        if not 0 < catalog.table["Finding"].sum() < len(catalog.table):
            continue
        single = shortcut_check(catalog, features=features).query("feature != @COMBINED")
        checks += len(single)
        flagged += int(single["flagged"].sum())
        distance = (single["auroc"] - 0.5).abs()
        band = 3 * np.array([null_sd(p, n) for p, n in zip(single["n_pos"], single["n_neg"])])
        old += int(((distance >= 0.1) & (distance > band)).sum())
    setting = "60 patients, 1-8 images, 3 patient-constant features"
    record("shortcuts", setting, "image-level band (old)", checks, old / checks)
    record("shortcuts", setting, "patient-level null", checks, flagged / checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the datasets (noisier figures)")
    parser.add_argument("--only", default="tests,boundary,intervals,macro,shortcuts")
    args = parser.parse_args()
    q = 4 if args.quick else 1
    blocks = {"tests": lambda: tests(2000 // q), "boundary": lambda: boundary(1000 // q),
              "intervals": lambda: intervals(400 // q, 400), "macro": lambda: macro(200 // q, 200),
              "shortcuts": lambda: shortcuts(200 // q)}
    start = time.process_time()
    for name in args.only.split(","):
        blocks[name.strip()]()
    print(f"CPU seconds: {time.process_time() - start:.0f}; population AUROC of signal 1.0: {true_auroc(1.0):.3f}")
    out = HERE / "results" / f"statistics-{socket.gethostname()}.csv"
    pd.DataFrame(ROWS).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
