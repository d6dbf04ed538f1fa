"""Training throughput (images/s) through the product vs a plain notebook-style PyTorch loop, same images, same CPU.

Product: catalog → prepare (once, 128 px uint8 shards) → chestxray.training.train.train (1-channel stem, channels_last,
Lightning). Baseline: pandas table of paths, PIL decode + resize + RGB per item per epoch, torchvision transforms,
3-channel model, a hand-written loop. Both run 2 epochs over the same training images; the second epoch is timed
(the first warms up caches and allocators). Prints the ratio per model and writes bench/results/train-<host>.csv,
with the model's compute-only rate (random tensors in memory) as the ceiling: where the baseline is already close
to it (a big model on a CPU), no input pipeline can win much.

Run: .venv/bin/python bench/bench_train.py [--images 128] [--models resnet18,cnn-small,densenet121]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import socket
import tempfile
import time
from pathlib import Path

import lightning
import pandas as pd
import torch

from chestxray.files import write_csv

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle-chest-xray-pneumonia"
RESULTS = Path(__file__).resolve().parent / "results"


def subset_catalog(n_train: int, seed: int = 0):
    """The Kaggle sample split by patient, keeping n_train training images and a small val split."""
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    catalog = assign_splits(read_folder(DATA), (0.8, 0.1, 0.1), seed=seed)
    table = catalog.table
    train = table[table["split"] == "train"].sample(n=n_train, random_state=seed)
    val = table[table["split"] == "val"].sample(n=32, random_state=seed)
    catalog.table = pd.concat([train, val]).reset_index(drop=True)
    return catalog


def baseline_images_per_s(table: pd.DataFrame, label: str, model: str, size: int, batch_size: int,
                          workers: int) -> float:
    """Notebook style: per-item PIL loading through pandas, 3-channel replicated input, plain loop; epoch 2 timed."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from chestxray.models import build_model

    class Frame(Dataset):
        def __init__(self, frame: pd.DataFrame) -> None:
            self.frame = frame.reset_index(drop=True)
            self.tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                          transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

        def __len__(self) -> int:
            return len(self.frame)

        def __getitem__(self, i: int):
            row = self.frame.iloc[i]
            image = Image.open(row["path"]).convert("RGB")
            return self.tf(image), torch.tensor([float(row[label])])

    loader = DataLoader(Frame(table), batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    net = build_model(model, num_labels=1, in_chans=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rate = 0.0
    for _ in range(2):
        net.train()
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(net(images), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        rate = seen / (time.perf_counter() - start)
    return rate


def compute_ceiling_images_per_s(n: int, model: str, size: int, batch_size: int) -> float:
    """Model compute alone (1-channel, channels_last, tensors already in memory): the most any pipeline can reach."""
    from chestxray.models import build_model

    net = build_model(model, num_labels=1, in_chans=1).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(batch_size, 1)
    steps = max(2, n // batch_size)
    start = time.perf_counter()
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(images), labels).backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def product_images_per_s(prepared: Path, model: str, batch_size: int, workers: int, out: Path,
                         precision: str = "32-true") -> float:
    """chestxray.training.train.train for 2 epochs; the second epoch's training images/s (validation excluded)."""
    from chestxray.training.config import resolve_config
    from chestxray.training.train import train

    config = resolve_config(prepared=str(prepared), model=model, epochs=2, batch_size=batch_size, lr=1e-4,
                            augment="none", num_workers=workers, mlflow=False, progress=False, patience=0,
                            out=str(out), precision=precision)
    train(config)
    last = pd.read_csv(out / "history.csv").iloc[-1]
    return float(last["train_images"] / last["train_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="training images (same set for both pipelines)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", default="resnet18,cnn-small,densenet121")
    parser.add_argument("--precisions", default="32-true,bf16-mixed",
                        help="product precisions to time (bf16-mixed on CPU pays off only with native bf16, e.g. "
                             "AVX512-BF16/AMX); the notebook baseline is always fp32")
    args = parser.parse_args()

    from chestxray.data.prepare import prepare_dataset

    catalog = subset_catalog(args.images)
    label = catalog.labels[0]
    train_table = catalog.table[catalog.table["split"] == "train"]
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    rows = []
    try:
        start = time.perf_counter()
        prepare_dataset(catalog, work / "prepared", size=args.size, workers=args.workers)
        prepare_s = time.perf_counter() - start
        print(f"prepare: {len(catalog.table)} images at {args.size} px in {prepare_s:.1f} s (one-time)")
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            base = baseline_images_per_s(train_table, label, model, args.size, args.batch_size, args.workers)
            ceiling = compute_ceiling_images_per_s(len(train_table), model, args.size, args.batch_size)
            for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
                product = product_images_per_s(work / "prepared", model, args.batch_size, args.workers,
                                               work / f"{model}-{precision}", precision)
                ratio = product / base
                print(f"{model:12s} {precision:10s} product {product:7.1f} images/s   notebook loop (fp32) "
                      f"{base:7.1f} images/s   ratio {ratio:.2f}x   (fp32 model compute alone: {ceiling:.1f})")
                rows.append({"model": model, "precision": precision, "image_size": args.size,
                             "batch_size": args.batch_size, "train_images": len(train_table), "workers": args.workers,
                             "product_images_per_s": round(product, 2), "baseline_images_per_s": round(base, 2),
                             "ratio": round(ratio, 3), "compute_only_fp32_images_per_s": round(ceiling, 2),
                             "prepare_seconds": round(prepare_s, 2),
                             "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                             "lightning": lightning.__version__, "python": platform.python_version(),
                             "host": socket.gethostname()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = RESULTS / f"train-{socket.gethostname()}.csv"
    write_csv(out, pd.DataFrame(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
