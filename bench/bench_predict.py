"""Benchmark: `chestxray predict` on a folder of 2,000 files (real samples repeated under new names + 5 broken).

Checks the row count (2,000 + 5) and that exactly the 5 broken files are quarantined with a reason, and prints
the predict process's peak RSS and images/s. Baseline in the same run: the same command on a folder of 200
files; predict streams in batches, so the peak RSS ratio (2,000 / 200 files) should stay near 1×.
The model is a cnn-small bundle at 64 px (random weights: scores are not the point, the I/O path is).

Run: .venv/bin/python bench/bench_predict.py [--files 2000] [--baseline 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from chestxray.data.labels import NIH14
from chestxray.data.samples import NIH, find_sample_data
from chestxray.models import build_model
from chestxray.models.bundle import save_bundle

HERE = Path(__file__).resolve().parent
BROKEN = {"truncated.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "notes.png": b"patient notes, not an image\n",
          "empty.png": b"", "bad.jpeg": b"\xff\xd8\xff\xe0garbage", "bad.dcm": b"\0" * 128 + b"DICM" + b"\x02" * 20}


def make_folder(root: Path, n: int, samples: list[Path]) -> Path:
    """n copies of the samples under new names in nested folders, plus the broken files."""
    for i in range(n):
        src = samples[i % len(samples)]
        dst = root / f"batch{i // 500:02d}" / f"scan-{i:05d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for name, data in BROKEN.items():
        (root / "batch00" / name).write_bytes(data)
    return root


def run_predict(bundle: Path, folder: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `chestxray predict` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "chestxray", "predict", str(bundle), str(folder), "--format", "csv", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("cannot attribute the peak RSS: run the baseline first (it is smaller)")
    return seconds, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=200)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"predict-{socket.gethostname()}.csv")
    args = parser.parse_args()
    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("real samples not found; set CHESTXRAY_DATA to the shared/data folder")
    samples = sorted((data / NIH / "images").glob("*.png"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        bundle = save_bundle(Path(tmp) / "bundle", build_model("cnn-small", num_labels=14), {
            "architecture": "cnn-small", "num_labels": 14, "in_chans": 1, "image_size": 64, "resize": "pad",
            "normalization": "gray", "labels": list(NIH14), "thresholds": {n: 0.5 for n in NIH14}})
        for n in (args.baseline, args.files):  # the smaller one first: RUSAGE_CHILDREN keeps the maximum
            folder = make_folder(Path(tmp) / f"scans{n}", n, samples)
            out = Path(tmp) / f"preds{n}.csv"
            seconds, peak = run_predict(bundle, folder, out)
            preds = pd.read_csv(out)
            bad = preds[preds["status"] == "quarantined"]
            assert len(preds) == n + len(BROKEN), (len(preds), n)
            assert sorted(Path(p).name for p in bad["path"]) == sorted(BROKEN), bad["path"].tolist()
            assert bad["reason"].str.len().gt(0).all()
            rows.append({"files": n, "broken": len(BROKEN), "rows": len(preds), "quarantined": len(bad),
                         "seconds": round(seconds, 2), "img_s": round(n / seconds, 1), "peak_rss_mb": round(peak, 1)})
    base, big = rows
    ratio = big["peak_rss_mb"] / base["peak_rss_mb"]
    print(f"predict on a folder of {big['files']} real sample copies + {len(BROKEN)} broken files "
          f"(cnn-small, 64 px, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
    for r in rows:
        print(f"  {r['files']:6d} files: {r['rows']} rows, {r['quarantined']} quarantined with reasons, "
              f"{r['seconds']:.1f} s ({r['img_s']:.0f} img/s), peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  peak RSS ratio {big['files']} / {base['files']} files: {ratio:.2f}× (bounded memory: near 1×)")
    frame = pd.DataFrame(rows).assign(rss_ratio=round(ratio, 3), python=platform.python_version(),
                                      torch=torch.__version__, cpus=os.cpu_count())
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
