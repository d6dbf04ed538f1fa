"""Benchmark: peak memory of `chestxray prepare` on a folder holding a decompression bomb, against the same folder
without it, in the same process tree and order.

The bomb is a valid 30,000 × 30,000 8-bit gray PNG (0.9 MB on disk, 900 MB decoded), made by
chestxray.data.synth.write_png_bomb. Three runs of `chestxray prepare -j 2 --size 64` over N small PNGs:
  baseline   the small PNGs only
  guarded    the same plus the bomb (default --max-pixels 100,000,000: refused from the header, quarantined)
  unguarded  the same with --max-pixels 1,000,000,000 (the bomb is decoded: what the guard saves)
Peak RSS is the largest resident set of the prepare process or any of its decoder workers (its own rusage, which
folds in its reaped children, through machine.run_own_rusage's launcher: not this process's). Prints one line per run and the ratio to the baseline, and writes
bench/results/bomb-<host>.csv. Target: guarded ≤ 1.1 × baseline.

Run: nice -n 19 .venv/bin/python bench/bench_bomb.py [--images 200] [--skip-unguarded]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from machine import run_own_rusage
from PIL import Image

from chestxray.data.catalog import Catalog, save_catalog
from chestxray.data.synth import write_png_bomb

HERE = Path(__file__).resolve().parent


def catalog(folder: Path, n: int, bomb: Path | None) -> Path:
    """Save a catalog of n small gray PNGs (+ the bomb) under folder; returns its folder."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / "images" / f"{i:04d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(path)
        rows.append((f"im{i:04d}", str(path), f"p{i}", ["train", "train", "val", "test"][i % 4], i % 2))
    if bomb is not None:
        rows.append(("bomb", str(bomb), "pbomb", "train", 0))
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", "Mass"])
    table["Mass"] = table["Mass"].astype("uint8")
    out = folder / ("catalog-bomb" if bomb is not None else "catalog")
    save_catalog(Catalog(table=table, labels=("Mass",), source="bench"), out)
    return out


def run(catalog_dir: Path, out: Path, max_pixels: int) -> tuple[float, float, str]:
    """(seconds, peak RSS MB of the prepare process tree, summary line) of one prepare run."""
    args = [sys.executable, "-m", "chestxray", "prepare", str(catalog_dir), "--out", str(out), "--size", "64",
            "-j", "2", "--max-pixels", str(max_pixels)]
    got = run_own_rusage(args, out.parent / f"{out.name}-log")
    if got["code"] != 0:
        raise SystemExit(f"prepare failed ({got['code']}): {' '.join(args)}")
    summary = (out.parent / f"{out.name}-log.out").read_text().strip()
    return got["seconds"], got["maxrss_mb"], summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--skip-unguarded", action="store_true", help="do not decode the bomb (needs ~1 GB)")
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"bomb-{socket.gethostname()}.csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bomb = write_png_bomb(root / "bomb.png")
        plain, bombed = catalog(root, args.images, None), catalog(root, args.images, bomb)
        runs = [("baseline", plain, 100_000_000), ("guarded", bombed, 100_000_000)]
        if not args.skip_unguarded:
            runs.append(("unguarded", bombed, 1_000_000_000))
        rows = []
        for name, cat, limit in runs:
            seconds, peak, summary = run(cat, root / f"prep-{name}", limit)
            rows.append({"run": name, "images": args.images, "bomb_mb_on_disk": round(bomb.stat().st_size / 1e6, 2),
                         "max_pixels": limit, "seconds": round(seconds, 1), "peak_rss_mb": round(peak)})
            print(f"{name:>9}: peak RSS {peak:6.0f} MB, {seconds:5.1f} s — {summary}")
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        row["ratio_vs_baseline"] = round(row["peak_rss_mb"] / base, 2)
    print("peak RSS vs baseline: " + ", ".join(f"{r['run']} {r['ratio_vs_baseline']}×" for r in rows))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
