"""Benchmark: JPEG draft decoding (libjpeg DCT scaling to ≥ 2 × target) vs. a full decode, on every sample JPEG.

For each JPEG under DATA (default ../shared/data/kaggle-chest-xray-pneumonia) and each target size it compares
load_square(path, size) (draft) with fit_square(full decode, size): the mean absolute difference over the image, the
worst single pixel, whether the letterbox geometry is identical (it follows from the full-resolution shape the draft
path reports) and for how many files the non-black extent differs (dark image borders near the padding).
Also times both (the reason draft mode exists). Prints one line per size and writes bench/results/draft-<host>.csv.
The tolerance stated in chestxray.data.imaging.DRAFT_TOLERANCE comes from this run.

Run: CHESTXRAY_DATA=../shared/data nice -n 19 .venv/bin/python bench/bench_draft.py [--sizes 32 64 256] [--limit N]
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from chestxray.data.imaging import _decode, _pil_to_gray, fit_square
from chestxray.data.samples import KAGGLE, find_sample_data

HERE = Path(__file__).resolve().parent
DATA = (find_sample_data(HERE) or HERE) / KAGGLE


def full_decode(path: Path) -> np.ndarray:
    """Reference: Pillow full-resolution decode with EXIF orientation, the module's gray rules."""
    with Image.open(path) as im:
        im.load()
        return _pil_to_gray(ImageOps.exif_transpose(im))


def extent(img: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row, first col, last col) that are not all-black padding."""
    rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
    return (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) if len(rows) else (0, 0, 0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256])
    parser.add_argument("--limit", type=int, default=0, help="first N files only (0 = all)")
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"draft-{socket.gethostname()}.csv")
    args = parser.parse_args()
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    files = files[:args.limit] if args.limit else files
    rows = []
    for size in args.sizes:
        means, worst, geometry_diff, extent_diff, t_draft, t_full = [], 0, 0, 0, 0.0, 0.0
        for path in files:
            t0 = time.perf_counter()
            reduced, shape = _decode(path, size, None)
            draft = fit_square(reduced, size, source_shape=shape)
            t1 = time.perf_counter()
            whole = full_decode(path)
            full = fit_square(whole, size)
            t_full += time.perf_counter() - t1
            t_draft += t1 - t0
            diff = np.abs(draft.astype(np.int16) - full.astype(np.int16))
            means.append(float(diff.mean()))
            worst = max(worst, int(diff.max()))
            geometry_diff += tuple(shape) != whole.shape
            extent_diff += extent(draft) != extent(full)
        row = {"size": size, "files": len(files), "mean_abs_diff": round(float(np.mean(means)), 3),
               "worst_file_mean": round(float(np.max(means)), 3), "worst_pixel": worst,
               "geometry_differs": geometry_diff, "extent_differs": extent_diff, "draft_ms": round(1000 * t_draft / len(files), 2),
               "full_ms": round(1000 * t_full / len(files), 2)}
        rows.append(row)
        print(f"{size:>4} px: {len(files)} JPEGs, mean |draft − full| {row['mean_abs_diff']} grey levels (worst file "
              f"{row['worst_file_mean']}, worst pixel {worst}), letterbox geometry differs for {geometry_diff}, "
              f"non-black extent for {extent_diff}; "
              f"{row['draft_ms']} ms vs {row['full_ms']} ms per file ({t_full / t_draft:.1f}× faster)")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
