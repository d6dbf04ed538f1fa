"""Benchmark: the whole pipeline at the full NIH collection's size, measured per stage at 10 %, 30 % and 100 %.

A synthetic collection with exactly the rows of the NIH table (Data_Entry_2017_v2020.csv.gz in
../shared/data/nih-metadata: 112,120 images, 30,805 patients, the real label frequencies) is written at 64 px, then
each stage runs as its own `chestxray` process, as a user would run it:
catalog nih → prepare (64 px) → train (cnn-small, one epoch, precision auto) → evaluate (1,000 patient-bootstrap
replicates) → report. For each stage it prints wall time, CPU time (user + system of the command and of the workers
it waited for; other load on the machine hardly changes it, so growth is judged on it) and peak RSS (the largest
single process, from wait4, and the sampled sum over the process tree, which counts pages shared by forked workers
more than once). The bootstrap
alone (chestxray.evaluation.metrics.summarize on the evaluated split's predictions) is timed in this process.

Images: writing 112,120 distinct PNGs costs more than the pipeline itself on a small machine, so POOL distinct
64 px images are written once and every row's file name is a hard link to one of them (row i → image i % POOL).
Decoding, resizing and sharding still happen once per row. The test split follows the official split's size
(25,596 of 112,120 rows ≈ 22.83 %), drawn by patient with the catalog's seeded stratified split.

Run: nice -n 19 .venv/bin/python bench/bench_scale.py --fractions 0.1,0.3,1.0 [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import psutil

from chestxray.data.samples import find_sample_data

HERE = Path(__file__).resolve().parent
POOL = 512
SIZE = 64
RSS_TARGET_MB = 4096
BOOT_TARGET_S = 10.0
RATIOS = "0.7,0.0717,0.2283"  # test ≈ the official 25,596 / 112,120


def nih_table(data: Path) -> pd.DataFrame:
    """The full NIH label table (one row per image) from the shared metadata."""
    path = data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"
    if not path.is_file():
        raise SystemExit(f"{path} not found; set CHESTXRAY_DATA to the shared/data folder")
    return pd.read_csv(path)


def write_images(table: pd.DataFrame, folder: Path) -> float:
    """POOL distinct 64 px PNGs, hard-linked under every row's file name; returns seconds."""
    start = time.perf_counter()
    pool = folder.parent / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    sources = []
    for i in range(POOL):
        blob = np.exp(-((yy - rng.uniform(10, 54)) ** 2 + (xx - rng.uniform(10, 54)) ** 2) / rng.uniform(30, 200))
        img = np.clip(60 + 40 * np.sin(xx / rng.uniform(4, 12)) + 120 * blob + rng.normal(0, 8, (SIZE, SIZE)), 0, 255)
        path = pool / f"pool{i:04d}.png"
        cv2.imwrite(str(path), img.astype(np.uint8))
        sources.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(table["Image Index"]):
        os.link(sources[i % POOL], folder / name)
    return time.perf_counter() - start


def run_stage(cmd: list[str]) -> dict[str, float]:
    """Run one chestxray command; wall seconds, peak RSS of its largest process (wait4) and of its tree (sampled)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched = psutil.Process(proc.pid)
    tree_peak = 0
    status, usage = 0, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
            tree_peak = max(tree_peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    output = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime  # includes the loader/decoder workers the command waited for
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 0),
            "tree_rss_mb": round(max(tree_peak, usage.ru_maxrss * 1024) / 2**20, 0)}


def time_bootstrap(run: Path) -> dict[str, float]:
    """The patient bootstrap alone (1,000 replicates, every label, macro + micro) on the evaluated predictions."""
    import json

    from chestxray.evaluation.metrics import summarize

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    labels, thresholds = metrics["labels"], metrics["thresholds"]
    pred = pd.read_csv(run / "eval" / "predictions.csv", dtype={"patient_id": str})
    start = time.perf_counter()
    summarize(pred[labels].to_numpy(), pred[[f"p_{x}" for x in labels]].to_numpy(), labels,
              pred["patient_id"].tolist(), thresholds, n_boot=1000, seed=0)
    return {"seconds": round(time.perf_counter() - start, 2), "images": len(pred),
            "patients": int(pred["patient_id"].nunique())}


def one_scale(table: pd.DataFrame, fraction: float, work: Path) -> list[dict[str, object]]:
    rows = table.iloc[: round(len(table) * fraction)]
    root = work / f"scale{round(fraction * 100):03d}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    csv = root / "Data_Entry_2017_v2020.csv"
    rows.to_csv(csv, index=False)
    out = [{"stage": "write images (hard links)", "seconds": round(write_images(rows, root / "images"), 1)}]
    cli = [sys.executable, "-m", "chestxray"]
    stages = [
        ("catalog", [*cli, "catalog", "nih", "--csv", str(csv), "--images", str(root / "images"),
                     "--out", str(root / "catalog"), "--ratios", RATIOS]),
        ("prepare", [*cli, "prepare", str(root / "catalog"), "--out", str(root / "prepared"), "--size", str(SIZE)]),
        ("train (1 epoch)", [*cli, "train", str(root / "prepared"), "--model", "cnn-small", "--epochs", "1",
                             "--batch-size", "64", "--num-workers", "2", "--no-mlflow", "--no-progress",
                             "--out", str(root / "run")]),
        ("evaluate", [*cli, "evaluate", str(root / "run"), "--n-boot", "1000", "--batch-size", "256"]),
        ("report", [*cli, "report", str(root / "run")]),
    ]
    for name, cmd in stages:
        result = run_stage(cmd)
        out.append({"stage": name, **result})
        print(f"    {name:18s} {result['seconds']:8.1f} s wall {result['cpu_seconds']:8.1f} s CPU   "
              f"peak RSS {result['peak_rss_mb']:6.0f} MB "
              f"(process tree {result['tree_rss_mb']:6.0f} MB)", flush=True)
    boot = time_bootstrap(root / "run")
    out.append({"stage": f"bootstrap only ({boot['images']} images, {boot['patients']} patients)",
                "seconds": boot["seconds"]})
    print(f"    bootstrap only     {boot['seconds']:8.2f} s   ({boot['images']} test images, {boot['patients']} "
          f"patients, 1,000 replicates; target <= {BOOT_TARGET_S:.0f} s)", flush=True)
    return [{"fraction": fraction, "rows": len(rows), "patients": int(rows["Patient ID"].nunique()), **r}
            for r in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.1,0.3,1.0")
    parser.add_argument("--work", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"scale-{socket.gethostname()}.csv")
    args = parser.parse_args()
    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("shared data not found; set CHESTXRAY_DATA to the shared/data folder")
    table = nih_table(data)
    work = args.work or Path(tempfile.mkdtemp(prefix="chestxray-scale-"))
    print(f"NIH table: {len(table)} rows, {table['Patient ID'].nunique()} patients; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; work folder {work}", flush=True)
    results: list[dict[str, object]] = []
    try:
        for fraction in (float(f) for f in args.fractions.split(",")):
            print(f"  {fraction:.0%} of the rows:", flush=True)
            results += one_scale(table, fraction, work)
            frame = pd.DataFrame(results).assign(python=platform.python_version(), cpus=os.cpu_count(),
                                                 load_avg_1m=round(os.getloadavg()[0], 2))
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(args.csv, index=False)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    frame = pd.DataFrame(results)
    timed = frame[frame["stage"].isin(["catalog", "prepare", "train (1 epoch)", "evaluate", "report"])]
    per_row = timed.assign(ms_per_row=1000 * timed["cpu_seconds"] / timed["rows"]).pivot(
        index="stage", columns="fraction", values="ms_per_row")
    print("  CPU ms per row by stage and fraction (linear growth: constant along a row; CPU time, unlike wall time,\n"
          "  does not grow with other load on the machine)")
    print(per_row.round(3).to_string())
    worst = timed["peak_rss_mb"].max()
    print(f"  largest peak RSS of any stage: {worst:.0f} MB (target <= {RSS_TARGET_MB} MB); wrote {args.csv}")


if __name__ == "__main__":
    main()
