"""Benchmark: training-loader throughput, ChestXrayDataModule over PREPARED vs the classic notebook Dataset.

Same images (the real Kaggle pneumonia sample in ../shared/data, or --images FOLDER with CLASS/ subfolders), same
output: float32 (32, 3, 224, 224) ImageNet-normalised batches plus labels, 2 DataLoader workers each; each loader
is built once and iterated --epochs times as a trainer does (worker start-up included), best epoch reported.
Classic = pandas .iloc per item, PIL open, Resize((224, 224)), Grayscale(3),
ToTensor, Normalize (with the torchvision equivalents of the advanced policy for the augmented row).
Product = prepare once at 224 px (timed separately: a one-time cost), then the DataModule train loader.
Prints images/s and ratios; writes bench/results/loader-<hostname>.csv. Targets: ≥ 10× without augmentation,
≥ 3× with the advanced policy.

Run: .venv/bin/python bench/bench_loader.py [--epochs 2] [--workers 2]
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

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from chestxray.data.datamodule import ChestXrayDataModule
from chestxray.data.prepare import prepare_dataset
from chestxray.data.sources import read_folder
from chestxray.data.split import assign_splits

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "kaggle-chest-xray-pneumonia"
SIZE, BATCH = 224, 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class NotebookDataset(Dataset):
    """The classic tutorial Dataset: a DataFrame row per item, decode + resize + tensor conversion per epoch."""

    def __init__(self, df: pd.DataFrame, labels: list[str], transform) -> None:
        self.df, self.labels, self.transform = df, labels, transform

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int):
        row = self.df.iloc[i]
        image = self.transform(Image.open(row["path"]))
        return image, torch.tensor(row[self.labels].to_numpy(dtype=np.float32))


def classic_transform(augment: bool):
    steps = [T.Resize((SIZE, SIZE)), T.Grayscale(3)]
    if augment:
        steps += [T.RandomHorizontalFlip(), T.RandomApply([T.RandomAffine(10, (0.06, 0.06), (0.9, 1.1))], p=0.7),
                  T.RandomApply([T.RandomResizedCrop(SIZE, (0.8, 1.0), (0.9, 1.1))], p=0.3),
                  T.RandomPerspective(0.05, p=0.3), T.RandomApply([T.ColorJitter(0.15, 0.15)], p=0.5)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


def time_epochs(loader, epochs: int) -> tuple[float, int, tuple]:
    """Best epoch time over `epochs` passes of one loader (as a trainer uses it), images per pass, batch shape."""
    best, count, shape = float("inf"), 0, ()
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            shape = shape or (tuple(images.shape), str(images.dtype))
            count += images.shape[0]
        best = min(best, time.perf_counter() - start)
    return best, count, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"loader-{socket.gethostname()}.csv")
    args = parser.parse_args()
    catalog = assign_splits(read_folder(args.images))
    catalog.table["split"] = "train"  # stream every image in both loaders
    labels = list(catalog.labels)
    df = catalog.table[["path", *labels]].reset_index(drop=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prepare_dataset(catalog, Path(tmp) / "prepared", size=SIZE, workers=os.cpu_count(), shard_size=500)
        t_prepare = time.perf_counter() - start
        for policy in ("none", "advanced"):
            augment = policy != "none"
            t_classic, n, shape_c = time_epochs(
                DataLoader(NotebookDataset(df, labels, classic_transform(augment)), batch_size=BATCH, shuffle=True,
                           num_workers=args.workers), args.epochs)
            dm = ChestXrayDataModule(Path(tmp) / "prepared", batch_size=BATCH, num_workers=args.workers,
                                     augment=policy, in_chans=3, normalization="imagenet", pin_memory=False)
            t_ours, n_ours, shape_o = time_epochs(dm.train_dataloader(), args.epochs)
            assert n == n_ours == len(df) and shape_c == shape_o, (n, n_ours, shape_c, shape_o)
            rows.append({"augment": policy, "images": n, "workers": args.workers, "classic_s": round(t_classic, 3),
                         "product_s": round(t_ours, 3), "classic_img_s": round(n / t_classic, 1),
                         "product_img_s": round(n / t_ours, 1), "ratio": round(t_classic / t_ours, 2),
                         "target_ratio": 10.0 if policy == "none" else 3.0, "batch_shape": str(shape_o[0])})
    load = round(os.getloadavg()[0], 2)
    print(f"{len(df)} images from {args.images.name}, batches {rows[0]['batch_shape']} float32, "
          f"{args.workers} workers, best of {args.epochs} epochs (load average {load} on {os.cpu_count()} CPUs)")
    print(f"  one-time prepare at {SIZE} px: {t_prepare:.1f} s ({len(df) / t_prepare:.0f} img/s)")
    for r in rows:
        print(f"  augment={r['augment']:8s} classic {r['classic_img_s']:8.1f} img/s   "
              f"product {r['product_img_s']:8.1f} "
              f"img/s   ratio {r['ratio']:6.2f}× (target ≥ {r['target_ratio']:.0f}×)")
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                "load_avg_1m": load, "prepare_s": round(t_prepare, 2)}
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{**r, **versions} for r in rows]).to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    sys.exit(main())
