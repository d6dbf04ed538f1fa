"""Benchmark: catalog + patient split of the full NIH table (112,120 rows), product vs the notebook way.

Product: chestxray.data.sources.read_nih (metadata-only, vectorised findings parsing) + chestxray.data.split.assign_splits.
Notebook baseline (one run; the product is best of --repeat): pandas.read_csv, Series.str.split('|') once, then one
row-wise DataFrame.apply per finding, then a random patient split with sklearn's train_test_split and a per-row
apply. Both run in this process; the label matrices must be equal.
Prints both times, the ratio and peak memory (tracemalloc, in a separate traced run of each), and writes
bench/results/catalog-<hostname>.csv. Targets: product <= 2 s, >= 10x faster, peak <= 1 GB.

Run: .venv/bin/python bench/bench_catalog.py [--csv PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import resource
import socket
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.labels import NIH14
from chestxray.data.sources import read_nih
from chestxray.data.split import assign_splits

HERE = Path(__file__).resolve().parent
DEFAULT_CSV = HERE.parent.parent / "shared" / "data" / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz"


def product(csv: Path) -> np.ndarray:
    """Catalog + split through the library; returns the (n, 14) label matrix."""
    catalog = assign_splits(read_nih(csv), seed=0)
    return catalog.label_matrix


def notebook(csv: Path) -> np.ndarray:
    """The common notebook recipe: str.split, one row-wise DataFrame.apply per finding, a random patient split."""
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(csv)
    df["findings"] = df["Finding Labels"].str.split("|")
    for finding in NIH14:
        df[finding] = df.apply(lambda row, f=finding: 1 if f in row["findings"] else 0, axis=1)
    patients = df["Patient ID"].unique()
    train_val, test = train_test_split(patients, test_size=0.2, random_state=0)
    train, val = train_test_split(train_val, test_size=0.125, random_state=0)
    test_set, val_set = set(test), set(val)
    df["split"] = df["Patient ID"].apply(lambda p: "test" if p in test_set else "val" if p in val_set else "train")
    return df[list(NIH14)].to_numpy(dtype=np.uint8)


def best_time(fn, csv: Path, repeat: int) -> tuple[float, np.ndarray]:
    """Fastest of `repeat` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(csv)
        times.append(time.perf_counter() - start)
    return min(times), result


def traced_peak_mb(fn, csv: Path) -> float:
    """Peak Python/numpy allocation (MB) during one run, measured with tracemalloc."""
    tracemalloc.start()
    fn(csv)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    product_s, product_labels = best_time(product, args.csv, args.repeat)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak after the product runs
    notebook_s, notebook_labels = best_time(notebook, args.csv, 1)
    equal = bool(np.array_equal(product_labels, notebook_labels))
    product_peak, notebook_peak = traced_peak_mb(product, args.csv), traced_peak_mb(notebook, args.csv)
    ratio = notebook_s / product_s
    row = {"host": socket.gethostname(), "python": platform.python_version(), "pandas": pd.__version__,
           "numpy": np.__version__, "rows": len(product_labels), "product_s": round(product_s, 3),
           "notebook_s": round(notebook_s, 3), "speedup": round(ratio, 1), "labels_equal": equal,
           "product_peak_mb": round(product_peak, 1), "notebook_peak_mb": round(notebook_peak, 1),
           "process_maxrss_mb": round(maxrss_mb, 1), "meets_time": product_s <= 2.0, "meets_speedup": ratio >= 10,
           "meets_memory": product_peak <= 1024}
    print(f"rows {row['rows']}: product {product_s:.3f} s, notebook {notebook_s:.3f} s, {ratio:.1f}x faster; "
          f"label matrices equal: {equal}")
    print(f"peak memory (tracemalloc): product {product_peak:.0f} MB, notebook {notebook_peak:.0f} MB; "
          f"process max RSS after product runs {maxrss_mb:.0f} MB")
    print(f"targets: <= 2 s {row['meets_time']}, >= 10x {row['meets_speedup']}, <= 1 GB {row['meets_memory']}")
    out = HERE / "results" / f"catalog-{socket.gethostname()}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(out, index=False)
    print(f"wrote {out}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
