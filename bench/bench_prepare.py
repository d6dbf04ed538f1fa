"""Benchmark: prepare throughput (images/s per core) on 1024×1024 8-bit PNGs, product vs a naive baseline.

Inputs: --n PNGs made by upscaling the real NIH / Kaggle samples in ../shared/data to 1024×1024 (Pillow, default PNG
settings) in a temporary folder. Measured in this process, one after the other:
- naive: one process, Image.open → convert('L') → resize(LANCZOS) → numpy, the usual notebook loop;
- codec only: one process, just reading and decompressing each PNG (the floor for any decoder);
- decode: one process, chestxray.data.imaging.load_square (libspng fast path for 8-bit gray PNG, JPEG draft,
  cv2 INTER_AREA) — the per-core figure;
- prepare: chestxray.data.prepare.prepare_dataset end to end (process pool, shards, manifest) with --workers.
Prints images/s, images/s per core and ratios; writes bench/results/prepare-<hostname>.csv. Target: ≥ 100
images/s per core. The machine may be shared: the ratios (same run, same load) are the robust numbers.

Run: .venv/bin/python bench/bench_prepare.py [--n 200] [--size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import PIL
from PIL import Image

from chestxray.data.catalog import Catalog
from chestxray.data.imaging import load_square
from chestxray.data.prepare import prepare_dataset

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
TARGET_PER_CORE = 100.0


def make_inputs(folder: Path, n: int) -> list[Path]:
    """n 1024×1024 8-bit PNGs upscaled from the real samples (cycled)."""
    sources = sorted((DATA / "nih-chestxray14" / "images").glob("*.png"))[:200]
    sources += sorted((DATA / "kaggle-chest-xray-pneumonia").glob("*/*.jpeg"))[:200]
    sources = [p for p in sources if min(Image.open(p).size) >= 128] or sources
    paths = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            big = im.convert("L").resize((1024, 1024), Image.BICUBIC)
        path = folder / f"img{i:04d}.png"
        big.save(path)
        paths.append(path)
    return paths


def naive(paths: list[Path], size: int) -> float:
    start = time.perf_counter()
    for p in paths:
        np.asarray(Image.open(p).convert("L").resize((size, size), Image.LANCZOS))
    return time.perf_counter() - start


def codec_floor(paths: list[Path], size: int) -> float:
    """Only the PNG codec (read + inflate + unfilter), no resize: the floor any decoder pays per image."""
    try:
        import pyspng
    except ImportError:
        pyspng = None
    start = time.perf_counter()
    for p in paths:
        data = p.read_bytes()
        pyspng.load(data) if pyspng else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return time.perf_counter() - start


def decode(paths: list[Path], size: int) -> float:
    start = time.perf_counter()
    for p in paths:
        load_square(p, size, "pad")
    return time.perf_counter() - start


def prepare(paths: list[Path], size: int, workers: int, out: Path) -> float:
    table = pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths],
                          "patient_id": [p.stem for p in paths], "split": "train", "Finding": np.uint8(0)})
    start = time.perf_counter()
    prepare_dataset(Catalog(table=table, labels=("Finding",)), out, size=size, workers=workers, shard_size=100)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"prepare-{socket.gethostname()}.csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), args.n)
        rows = []
        t_naive = naive(paths, args.size)
        rows.append(("naive (1 process, PIL LANCZOS)", 1, t_naive))
        rows.append(("codec only (1 process, no resize)", 1, codec_floor(paths, args.size)))
        rows.append(("decode (1 process, load_square)", 1, decode(paths, args.size)))
        rows.append((f"prepare ({args.workers} workers, shards)", args.workers,
                     prepare(paths, args.size, args.workers, Path(tmp) / "prepared")))
    versions = {"python": platform.python_version(), "pillow": PIL.__version__, "opencv": cv2.__version__,
                "pyspng": _version("pyspng"), "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    records = []
    print(f"{args.n} PNGs 1024×1024 8-bit → {args.size} px   (load average {versions['load_avg_1m']} on "
          f"{versions['cpus']} CPUs)")
    for name, cores, seconds in rows:
        rate = args.n / seconds
        per_core = rate / cores
        ratio = per_core / (args.n / t_naive)
        print(f"  {name:38s} {seconds:7.2f} s  {rate:7.1f} img/s  {per_core:7.1f} img/s/core  "
              f"{ratio:5.2f}× naive per core")
        records.append({"method": name, "images": args.n, "size": args.size, "workers": cores,
                        "seconds": round(seconds, 3), "images_per_s": round(rate, 1),
                        "images_per_s_per_core": round(per_core, 1), "ratio_vs_naive_per_core": round(ratio, 2),
                        "target_per_core": TARGET_PER_CORE, **versions})
    best = max(r["images_per_s_per_core"] for r in records[2:])
    print(f"best product rate {best:.1f} img/s/core (target ≥ {TARGET_PER_CORE:.0f}: "
          f"{'met' if best >= TARGET_PER_CORE else 'NOT met on this machine'})")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a missing optional package is reported as such
        return "absent"


if __name__ == "__main__":
    sys.exit(main())
