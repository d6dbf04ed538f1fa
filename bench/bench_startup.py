"""Benchmark: how fast the command line answers `--help` and usage errors, against `python -c pass`.

Each case is a fresh process (what a user waits for), run --repeat times; the best and median wall times are kept.
Baseline: the same interpreter starting and doing nothing (`python -c pass`), measured the same way, so the ratio
says how much chestxray adds to Python's own start-up. Cases: `chestxray --help`, `chestxray train --help`, a usage
error (`chestxray train` with an unknown option), and value errors that must be caught before torch, Lightning or
MLflow load (`train --model nope`, `train --lr -1`, `train` on a missing PREPARED folder, and for every other heavy
command — explain, evaluate, predict, export, serve, study, tune, prepare, verify, weights, ui, demo — a missing path
or a bad value).
Target: every case answers in under 1 s. Writes bench/results/startup-<hostname>.csv.

Run: .venv/bin/python bench/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "chestxray"]


def cases(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (argv, expected exit code)."""
    missing = str(tmp / "no-such-folder")
    return {
        "python -c pass (baseline)": ([sys.executable, "-c", "pass"], 0),
        "chestxray --help": ([*CLI, "--help"], 0),
        "chestxray train --help": ([*CLI, "train", "--help"], 0),
        "usage error (train --bogus)": ([*CLI, "train", "--bogus"], 2),
        "train --model nope": ([*CLI, "train", missing, "--model", "nope", "--no-mlflow"], 1),
        "train --lr -1": ([*CLI, "train", missing, "--lr", "-1", "--no-mlflow"], 1),
        "train on a missing folder": ([*CLI, "train", missing, "--no-mlflow"], 1),
        "explain a missing run": ([*CLI, "explain", missing, "--split", "test"], 1),
        "evaluate a missing run": ([*CLI, "evaluate", missing], 1),
        "evaluate --tta flip": ([*CLI, "evaluate", missing, "--tta", "flip"], 1),
        "predict with a missing model": ([*CLI, "predict", missing, "x.png"], 1),
        "predict --format xml": ([*CLI, "predict", missing, "x.png", "--format", "xml"], 1),
        "export a missing bundle": ([*CLI, "export", missing, "--onnx", "m.onnx"], 1),
        "serve a missing bundle": ([*CLI, "serve", missing], 1),
        "study on a missing folder": ([*CLI, "study", missing, "--out", missing], 1),
        "tune on a missing folder": ([*CLI, "tune", missing], 1),
        "prepare a missing catalog": ([*CLI, "prepare", missing, "--out", missing], 1),
        "verify a missing folder": ([*CLI, "verify", missing], 1),
        "weights fetch nope": ([*CLI, "weights", "fetch", "nope"], 1),
        "ui with a missing store": ([*CLI, "ui", "--store", missing], 1),
        "demo --model nope": ([*CLI, "demo", "--model", "nope"], 1),
    }


def timed(argv: list[str], expected: int, repeat: int) -> list[float]:
    """Wall seconds of `repeat` fresh runs; fails loudly when the exit code is not the expected one."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=os.environ)
        times.append(time.perf_counter() - start)
        if done.returncode != expected:
            raise SystemExit(f"{argv}: exit {done.returncode}, expected {expected}\n{done.stdout}{done.stderr}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    rows = []
    baseline = None
    for name, (argv, expected) in cases(tmp).items():
        times = timed(argv, expected, args.repeat)
        best, median = min(times), statistics.median(times)
        baseline = baseline if baseline is not None else median
        rows.append({"host": socket.gethostname(), "python": platform.python_version(), "case": name,
                     "best_s": round(best, 3), "median_s": round(median, 3), "ratio_vs_python": round(median / baseline, 1),
                     "meets_1s": median < 1.0, "repeat": args.repeat})
        print(f"{name:32s} best {best:6.3f} s  median {median:6.3f} s  {median / baseline:5.1f}x python  "
              f"{'<1 s' if median < 1.0 else 'NOT < 1 s'}")
    out = HERE / "results" / f"startup-{socket.gethostname()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
