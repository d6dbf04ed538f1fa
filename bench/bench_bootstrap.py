"""Benchmark: evaluate's patient bootstrap on an official-size NIH test split, product vs the previous approach.

Split: 25,596 rows of the real NIH table (Data_Entry_2017_v2020.csv.gz, its labels and patient ids), taken as whole
patients with 5+ images in a seeded order (the official test list holds ~2,800 patients with many follow-ups each;
the list itself is not in ../shared/data). Scores are synthetic with signal (seeded).
Product: chestxray.evaluation.metrics.summarize (1,000 replicates, 14 findings, macro + micro + normal, stratified
patient resampling, vectorised rank sums over sorted scores).
Baseline (in this process): the previous implementation: plain patient resampling, per-task sparse
(patients x distinct scores) matrices multiplied into dense (replicates x distinct scores) weights, chunked.
Both are timed for the whole bootstrap of the same tasks; the baseline is run once (it is slow).
Target: product <= 10 s on the 2-core development machine. Writes bench/results/bootstrap-<hostname>.csv.

Run: .venv/bin/python bench/bench_bootstrap.py [--n-boot 1000] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from chestxray.data.sources import read_nih
from chestxray.evaluation.metrics import normal_truth_and_score, patient_codes, summarize

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CHESTXRAY_DATA", HERE.parent.parent / "shared" / "data"))
DEFAULT_CSV = DATA / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
N_TEST = 25_596  # images in the official NIH test list


def official_size_split(csv: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(labels (N, 14), scores (N, 14), patient ids, label names) for N_TEST rows of whole patients."""
    catalog = read_nih(csv)
    table = catalog.table
    per_patient = table.groupby("patient_id").size()
    rng = np.random.default_rng(seed)
    patients = rng.permutation(per_patient[per_patient >= 5].index.to_numpy())
    cum = per_patient.loc[patients].cumsum().to_numpy()
    chosen = set(patients[: int(np.searchsorted(cum, N_TEST)) + 1])
    rows = np.flatnonzero(table["patient_id"].isin(chosen).to_numpy())[:N_TEST]
    y = catalog.label_matrix[rows].astype(np.uint8)
    scores = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.2 * y - 1.5)))
    return y, scores.astype(np.float32).astype(np.float64), table["patient_id"].iloc[rows].astype(str).tolist(), \
        list(catalog.labels)


def baseline_bootstrap(y: np.ndarray, s: np.ndarray, patients: list[str], n_boot: int, seed: int = 0) -> np.ndarray:
    """The previous implementation's bootstrap of every task (AUROC and AUPRC replicates), for timing."""

    def group_matrices(yy, ss, codes, n_units):
        order = np.argsort(ss, kind="mergesort")
        s_sorted = ss[order]
        group_sorted = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1
        group = np.empty_like(group_sorted)
        group[order] = group_sorted
        shape = (n_units, int(group_sorted[-1]) + 1)
        yb = yy.astype(bool)
        pos = sparse.csr_matrix((np.ones(int(yb.sum())), (codes[yb], group[yb])), shape=shape)
        neg = sparse.csr_matrix((np.ones(int((~yb).sum())), (codes[~yb], group[~yb])), shape=shape)
        return pos, neg

    def curves(pos, neg):
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        pos_above = n_pos[:, None] - np.cumsum(pos, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            roc = (neg * (pos_above + 0.5 * pos)).sum(1) / (n_pos * n_neg)
            pr_pos, pr_neg = pos[:, ::-1], neg[:, ::-1]
            tps, fps = np.cumsum(pr_pos, axis=1), np.cumsum(pr_neg, axis=1)
            precision = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
            pr = (pr_pos * precision).sum(1) / tps[:, -1]
        return roc, pr

    codes, n_pat = patient_codes(patients)
    n_lab = y.shape[1]
    norm_t, norm_s = normal_truth_and_score(y, s)
    tasks = [(y[:, j], s[:, j], codes) for j in range(n_lab)]
    tasks += [(y.ravel("F"), s.ravel("F"), np.tile(codes, n_lab)), (norm_t, norm_s, codes)]
    mats = [group_matrices(*task, n_pat) for task in tasks]
    reps = np.full((n_boot, len(tasks), 2), np.nan)
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, 200):
        stop = min(start + 200, n_boot)
        draws = rng.integers(0, n_pat, size=(stop - start, n_pat))
        flat = (draws + np.arange(stop - start)[:, None] * n_pat).ravel()
        counts = np.bincount(flat, minlength=(stop - start) * n_pat).reshape(stop - start, n_pat).astype(float)
        for k, (pos_m, neg_m) in enumerate(mats):
            step = max(1, int(4e6 // max(pos_m.shape[1], 1)))
            for a in range(0, stop - start, step):
                w = counts[a : a + step]
                pos, neg = np.asarray((pos_m.T @ w.T).T), np.asarray((neg_m.T @ w.T).T)
                roc, pr = curves(pos, neg)
                reps[start + a : start + a + len(w), k, 0], reps[start + a : start + a + len(w), k, 1] = roc, pr
    return reps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--skip-baseline", action="store_true", help="time the product only")
    args = parser.parse_args()
    y, s, patients, labels = official_size_split(args.csv)
    n_pat = len(set(patients))
    start = time.perf_counter()
    summary = summarize(y, s, labels, patients, n_boot=args.n_boot)
    product_s = time.perf_counter() - start
    macro = summary.row("macro").auroc
    print(f"split: {len(y)} images, {n_pat} patients, {y.shape[1]} findings, {args.n_boot} replicates, "
          f"{summary.strata} strata")
    print(f"product: summarize (bootstrap + point metrics) {product_s:.2f} s; macro AUROC {macro.value:.4f} "
          f"[{macro.low:.4f}, {macro.high:.4f}] over {macro.replicates} replicates")
    baseline_s = None
    if not args.skip_baseline:
        start = time.perf_counter()
        baseline_bootstrap(y, s, patients, args.n_boot)
        baseline_s = time.perf_counter() - start
        print(f"baseline: previous bootstrap alone {baseline_s:.2f} s -> product is {baseline_s / product_s:.1f}x faster")
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"host": socket.gethostname(), "python": platform.python_version(), "numpy": np.__version__,
           "images": len(y), "patients": n_pat, "findings": y.shape[1], "replicates": args.n_boot,
           "product_s": round(product_s, 2), "baseline_s": None if baseline_s is None else round(baseline_s, 2),
           "speedup": None if baseline_s is None else round(baseline_s / product_s, 1),
           "process_maxrss_mb": round(maxrss_mb), "meets_10s": product_s <= 10.0,
           "load_avg_1min": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}
    print(f"target <= 10 s: {row['meets_10s']}; process max RSS {maxrss_mb:.0f} MB; load average "
          f"{row['load_avg_1min']} on {row['cpus']} CPUs (a shared machine inflates both times alike)")
    out = HERE / "results" / f"bootstrap-{socket.gethostname()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
