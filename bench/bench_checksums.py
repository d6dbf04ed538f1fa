"""Benchmark: what the default shard checksum check (sha256 of every shard a command reads) costs train and evaluate.

Issue 22: a few flipped label bytes keep a shard's size, so the size check passed and evaluate reported AUROC 0.359
instead of 0.641. The checksum check catches it and is the default for a local PREPARED folder wherever it costs under
a few percent of the command. This script measures that share on synthetic NIH-layout data (--n images prepared at
--size px), all in this process with no loader workers, so CPU time (user + system, all threads) covers everything:
- the checks alone (median of --repeats): sizes of every shard; sizes + sha256 of the train and val shards (what
  train adds); sizes + sha256 of the val and test shards (what evaluate adds);
- train: one epoch of each --models, batch 32, fp as `--precision auto` picks (bf16 on CPUs with native bf16);
- evaluate: that run, 1,000 patient-bootstrap replicates (the default), on the test split.
The share printed is (checksum check − size check) / the whole command, both in CPU seconds. The smallest model is the
worst case (least work per byte hashed). Writes bench/results/checksums-<hostname>.csv; no test asserts a timing.

Run: nice -n 19 .venv/bin/python bench/bench_checksums.py [--n 2000] [--size 128] [--models cnn-tiny,cnn-small]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from chestxray.data.prepare import prepare_dataset
from chestxray.data.sources import read_nih
from chestxray.data.split import assign_splits
from chestxray.data.synth import make_synthetic
from chestxray.data.verify import verify_prepared
from chestxray.evaluation.evaluate import evaluate_run
from chestxray.training.config import TrainConfig
from chestxray.training.train import train

HERE = Path(__file__).resolve().parent


def cpu_seconds(func, *args, **kwargs) -> tuple[float, float]:
    """(CPU seconds of this process, all threads; wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    func(*args, **kwargs)
    return time.process_time() - cpu, time.perf_counter() - wall


def check_cost(prepared: Path, repeats: int, splits: tuple[str, ...] | None, checksums: bool) -> float:
    """Median CPU seconds of one verify_prepared call (the check train/evaluate run before reading)."""
    return statistics.median(cpu_seconds(verify_prepared, prepared, checksums=checksums, splits=splits)[0]
                             for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default="cnn-tiny,cnn-small")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = make_synthetic(root / "source", n=args.n, size=args.size, seed=0)
        catalog = assign_splits(read_nih(source / "labels.csv", source / "images"), seed=0)
        prepare_dataset(catalog, root / "prepared", size=args.size, workers=0)
        prepared = root / "prepared"
        megabytes = sum(p.stat().st_size for p in prepared.glob("*.tar")) / 1e6
        sizes = check_cost(prepared, args.repeats, None, False)
        train_check = check_cost(prepared, args.repeats, ("train", "val"), True) - sizes
        eval_check = check_cost(prepared, args.repeats, ("val", "test"), True) - sizes
        print(f"{args.n} images at {args.size} px, {megabytes:.1f} MB of shards; size check {sizes * 1e3:.1f} ms "
              f"CPU; checksums add {train_check * 1e3:.1f} ms (train: train + val) and {eval_check * 1e3:.1f} ms "
              "(evaluate: val + test)")
        rows = []
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            config = TrainConfig(prepared=str(prepared), model=model, epochs=1, batch_size=32, num_workers=0,
                                 mlflow=False, progress=False, out=str(root / f"run-{model}"))
            train_cpu, train_wall = cpu_seconds(train, config)
            eval_cpu, eval_wall = cpu_seconds(evaluate_run, root / f"run-{model}")
            for command, cpu, wall, extra in (("train, 1 epoch", train_cpu, train_wall, train_check),
                                              ("evaluate, 1000 replicates", eval_cpu, eval_wall, eval_check)):
                share = extra / cpu
                rows.append({"command": command, "model": model, "images": args.n, "size": args.size,
                             "shard_mb": round(megabytes, 1), "command_cpu_s": round(cpu, 2),
                             "command_wall_s": round(wall, 2), "checksum_extra_cpu_ms": round(extra * 1e3, 1),
                             "share_percent": round(100 * share, 3), "python": platform.python_version(),
                             "torch": torch.__version__, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]})
                print(f"{command:28s} {model:10s} {cpu:8.2f} s CPU ({wall:.1f} s wall); checksums add "
                      f"{extra * 1e3:.1f} ms = {100 * share:.2f}% of the command")
        out = HERE / "results" / f"checksums-{socket.gethostname()}.csv"
        out.parent.mkdir(exist_ok=True)
        pd.DataFrame(rows).to_csv(out, index=False)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
