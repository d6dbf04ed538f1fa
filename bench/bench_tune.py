"""Hyperparameter search: 12 TPE trials vs 12 random configurations from the same space, Kaggle sample at 64 px.

Both studies use the same seed (so the first --startup configurations are the same), the same fixed settings
(cnn-small, short epochs, fp32), the same search space (the default space of `chestxray tune`) and the same median
pruner; the objective is validation AUROC. Prints, per sampler, the
best validation AUROC, the wall time and how many trials were pruned, and writes bench/results/tune-<host>.csv.
The test split is never read.

Run: .venv/bin/python bench/bench_tune.py [--trials 12] [--epochs 3] [--train-images 600] [--size 64]
     (OMP_NUM_THREADS=1 on a shared machine)
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from chestxray.files import write_csv

RESULTS = Path(__file__).resolve().parent / "results"


def prepared_sample(root: Path, size: int, n_train: int, seed: int = 0) -> Path:
    """The Kaggle sample split by patient (80/10/10), n_train training images kept, prepared at `size` px."""
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    from chestxray.data.samples import find_sample_data

    data = find_sample_data(Path(__file__).resolve().parents[1])
    if data is None:
        raise SystemExit("the shared sample data was not found; set CHESTXRAY_DATA to the shared/data folder")
    catalog = assign_splits(read_folder(data / "kaggle-chest-xray-pneumonia"), (0.8, 0.1, 0.1), seed=seed)
    table = catalog.table
    train = table[table["split"] == "train"]
    catalog.table = pd.concat([train.sample(n=min(n_train, len(train)), random_state=seed),
                               table[table["split"] != "train"]]).reset_index(drop=True)
    prepare_dataset(catalog, root / "prepared", size=size, workers=2)
    return root / "prepared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--startup", type=int, default=4, help="TPE's random start-up trials (the same seed "
                        "gives both samplers the same first configurations)")
    parser.add_argument("--precision", default="32-true", help="fp32 by default: on CPU, bf16 autocast of a small "
                        "CNN is slower here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import optuna

    from chestxray.training.config import TrainConfig
    from chestxray.workflows.search_space import read_space
    from chestxray.workflows.tune import TuneSettings, tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        prepared = prepared_sample(Path(tmp), args.size, args.train_images)
        base = TrainConfig(prepared=str(prepared), model=args.model, epochs=args.epochs, num_workers=0,
                           patience=0, precision=args.precision, mlflow=False, progress=False)
        # TPE's default 10 random start-up trials would leave only 2 of 12 model-guided: start it after 4
        space = replace(read_space(None, base), sampler={"name": "tpe", "n_startup_trials": args.startup})
        for sampler in ("tpe", "random"):
            start = time.perf_counter()
            result = tune(TuneSettings(base=base, space=space, out=str(Path(tmp) / sampler), trials=args.trials,
                                       sampler=sampler))
            seconds = time.perf_counter() - start
            rows.append({"sampler": sampler, "trials": args.trials, "best_val_auroc": result.best_value,
                         "complete": result.complete, "pruned": result.pruned, "wall_s": round(seconds, 1),
                         "model": args.model, "epochs": args.epochs, "size": args.size,
                         "train_images": args.train_images, "host": socket.gethostname(),
                         "cpu": platform.processor() or platform.machine()})
            print(f"{sampler:6s}: best val AUROC {result.best_value:.4f} (trial {result.best_number}), "
                  f"{result.pruned} of {args.trials} pruned, {seconds:.0f} s", flush=True)
            shutil.rmtree(Path(tmp) / sampler / "trials", ignore_errors=True)
    table = pd.DataFrame(rows)
    tpe, rnd = table.iloc[0], table.iloc[1]
    print(f"TPE vs random: best val AUROC {tpe.best_val_auroc:.4f} vs {rnd.best_val_auroc:.4f} "
          f"({tpe.best_val_auroc - rnd.best_val_auroc:+.4f}); wall time {tpe.wall_s:.0f} s vs {rnd.wall_s:.0f} s "
          f"({tpe.wall_s / rnd.wall_s:.2f}×); pruned {tpe.pruned} vs {rnd.pruned}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tune-{socket.gethostname()}.csv"
    write_csv(path, table, index=False)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
