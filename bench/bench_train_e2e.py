"""End to end, same model: the product's training run against a notebook-style loop, in CPU seconds of the whole
process (user + sys, with its DataLoader workers and pools) and held-out AUROC, on the Kaggle sample.

Both train `--model` (resnet18 by default) from scratch at `--size` px for `--epochs` epochs with batch 32, Adam at
lr 1e-4, on the same training images (the catalog's patient split, seed 0, 0.7/0.1/0.2; `--train-images N` keeps
N of them, 0: all) and score the same held-out test split. Each variant runs in its own process:
- `product`: catalog → prepare (`--size` px shards) → chestxray.training.train.train with the product's defaults
  (1 channel, channels_last, augment minimal, cosine schedule, validation each epoch, best checkpoint, bundle,
  MLflow) at `--precision` and `--compile auto` (what the product chooses; run.json says what it chose) →
  chestxray.evaluation.evaluate.evaluate_run on the test split (ONNX Runtime, bootstrap CIs; ood=False: the
  out-of-distribution reference is a separate feature, not scoring);
- `product-eager`: the same with `--compile off`, to isolate what compiling gives;
- `notebook`: a pandas table of paths, PIL decode + resize + RGB + ImageNet normalisation per item per epoch
  (torchvision), the 3-channel model in NCHW, a plain loop, the last epoch's weights scored with sklearn's AUROC,
  with libgomp's default spin (GOMP_SPINCOUNT=300000, what a notebook gets);
- `notebook-spin`: the same notebook given chestxray's short OpenMP spin (chestxray.openmp), to show how much of
  the difference is that one setting, which any notebook can copy.
Every variant's process gets exactly its OpenMP setting in its environment (libgomp reads it once, when torch loads).
The notebook is always fp32; compare it with the product at `--precision 32-true` for the issue's figure (CPUs
without native bf16). Writes bench/results/train-e2e-<host>.csv.

Run: nice -n 19 .venv/bin/python bench/bench_train_e2e.py [--train-images 0] [--epochs 10] [--size 128]
     [--model resnet18] [--precision 32-true] [--variants product,notebook,product-eager,notebook-spin] [--parallel]
     [--busy N] [--out CSV]
(the CSV is rewritten after each variant, so a run stopped early keeps what it finished)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from machine import busy_processes, describe, machine_info, results_csv

from chestxray.openmp import SPINCOUNT

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle-chest-xray-pneumonia"
VARIANTS = ("product", "notebook", "product-eager", "notebook-spin")
BATCH, LR = 32, 1e-4


def catalog_subset(data: Path, train_images: int, seed: int = 0):
    """The Kaggle sample split by patient (0.7/0.1/0.2); train_images > 0 keeps that many training images."""
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    catalog = assign_splits(read_folder(data), (0.7, 0.1, 0.2), seed=seed)
    table = catalog.table
    if train_images > 0:
        train = table[table["split"] == "train"].sample(n=train_images, random_state=seed)
        table = pd.concat([train, table[table["split"] != "train"]])
    catalog.table = table.reset_index(drop=True)
    return catalog


def product_worker(args: argparse.Namespace, work: Path, compile: str) -> dict[str, object]:
    """catalog → prepare → train → evaluate on the test split, as a user runs them; AUROC and the execution chosen."""
    from chestxray.data.prepare import prepare_dataset
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.training.config import resolve_config
    from chestxray.training.train import train

    catalog = catalog_subset(Path(args.data), args.train_images)
    prepare_dataset(catalog, work / "prepared", size=args.size)
    config = resolve_config(prepared=str(work / "prepared"), model=args.model, epochs=args.epochs, batch_size=BATCH,
                            lr=LR, precision=args.precision, compile=compile, out=str(work / "run"), progress=False)
    result = train(config)
    evaluation = evaluate_run(result.run_dir, split="test", ood=False)
    run = json.loads((Path(result.run_dir) / "run.json").read_text(encoding="utf-8"))
    return {"test_auroc": evaluation.macro_auroc, "precision": run.get("precision"), "compile": run.get("compile"),
            "execution_reason": run.get("execution_reason", ""), "openmp_wait": run.get("openmp_wait", "")}


def notebook_worker(args: argparse.Namespace) -> dict[str, object]:
    """The notebook recipe: per-item PIL loading through pandas, 3-channel NCHW input, plain loop, sklearn AUROC."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from chestxray.models import build_model

    catalog = catalog_subset(Path(args.data), args.train_images)
    label, table = catalog.labels[0], catalog.table
    tf = transforms.Compose([transforms.Resize((args.size, args.size)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    class Frame(Dataset):
        def __init__(self, frame: pd.DataFrame) -> None:
            self.frame = frame.reset_index(drop=True)

        def __len__(self) -> int:
            return len(self.frame)

        def __getitem__(self, i: int):
            row = self.frame.iloc[i]
            return tf(Image.open(row["path"]).convert("RGB")), torch.tensor([float(row[label])])

    torch.manual_seed(0)
    train = DataLoader(Frame(table[table["split"] == "train"]), batch_size=BATCH, shuffle=True, num_workers=2)
    test = DataLoader(Frame(table[table["split"] == "test"]), batch_size=BATCH, num_workers=2)
    net = build_model(args.model, num_labels=1, in_chans=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(args.epochs):
        net.train()
        for images, labels in train:
            optimizer.zero_grad()
            loss_fn(net(images), labels).backward()
            optimizer.step()
    net.eval()
    scores, truth = [], []
    with torch.no_grad():
        for images, labels in test:
            scores.append(torch.sigmoid(net(images)).squeeze(1).numpy())
            truth.append(labels.squeeze(1).numpy())
    return {"test_auroc": float(roc_auc_score(np.concatenate(truth), np.concatenate(scores))), "precision": "32-true",
            "compile": False, "execution_reason": "eager PyTorch, NCHW, 3 channels (notebook)",
            "openmp_wait": f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '300000')}"}


def worker(args: argparse.Namespace) -> None:
    """Run one variant in this process and print its result as one JSON line."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        if args.worker.startswith("notebook"):
            row = notebook_worker(args)
        else:
            row = product_worker(args, Path(tmp), "off" if args.worker == "product-eager" else "auto")
    print("RESULT " + json.dumps(row))


STARTED: dict[str, float] = {}


def start(args: argparse.Namespace, variant: str, logs: Path) -> subprocess.Popen:
    """Start one variant's worker process (output to files in logs/); reaped by main's os.wait4, not by Popen."""
    command = [sys.executable, __file__, "--worker", variant, "--data", args.data, "--train-images",
               str(args.train_images), "--epochs", str(args.epochs), "--size", str(args.size), "--model",
               args.model, "--precision", args.precision]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if variant == "notebook":
        env["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default, written out: the notebook never imports chestxray first
    elif variant == "notebook-spin":
        env["GOMP_SPINCOUNT"] = SPINCOUNT
    STARTED[variant] = time.perf_counter()
    with open(logs / f"{variant}.out", "w") as out, open(logs / f"{variant}.err", "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, env=env)


def finish(args: argparse.Namespace, variant: str, code: int, logs: Path, cpu_s: float, wall_s: float,
           info: dict[str, object]) -> dict[str, object]:
    """One CSV row from a finished worker: CPU seconds (user + sys of it and its workers), wall, AUROC, execution."""
    lines = [line for line in (logs / f"{variant}.out").read_text().splitlines() if line.startswith("RESULT ")]
    if code or not lines:
        sys.exit(f"{variant} failed (exit {code}):\n{(logs / f'{variant}.err').read_text()[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"{variant:14s} {cpu_s:8.1f} CPU s ({wall_s:7.1f} wall)  test AUROC {result['test_auroc']:.4f}  "
          f"{result['precision']}, compile {result['compile']}: {result['execution_reason']}", flush=True)
    return {"variant": variant, "model": args.model, "size": args.size, "epochs": args.epochs,
            "train_images": args.train_images or "all", "batch": BATCH, "cpu_s": round(cpu_s, 1),
            "wall_s": round(wall_s, 1), "parallel": args.parallel, "busy_processes": args.busy, **result, **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--train-images", type=int, default=0, help="training images kept (0: the whole train split)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--precision", default="32-true", help="the product's --precision (the notebook is fp32)")
    parser.add_argument("--variants", default=",".join(VARIANTS[:3]))
    parser.add_argument("--parallel", action="store_true",
                        help="run the variants side by side (each one's CPU seconds are still its own: a loaded "
                             "machine gives a low-priority job more CPU as several processes)")
    parser.add_argument("--busy", type=int, default=0,
                        help="busy processes (a pure Python loop each) running beside every variant: a shared machine")
    parser.add_argument("--out", default="", help="CSV to write (default bench/results/train-e2e-<host>.csv)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    info = machine_info()
    print(describe(info))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-logs-") as logs:
        waves = [variants] if args.parallel else [[v] for v in variants]
        for wave in waves:
            with busy_processes(args.busy):
                run_wave(args, wave, Path(logs), info, rows)
    print(f"wrote {write_rows(rows, info, args.out)}")


def run_wave(args: argparse.Namespace, wave: list[str], logs: Path, info: dict[str, object],
             rows: list[dict[str, object]]) -> None:
    """Start the wave's variants side by side and add each one's row as it finishes (the CSV rewritten each time)."""
    procs = {variant: start(args, variant, logs) for variant in wave}  # kept: Popen leaves them be
    running = {proc.pid: variant for variant, proc in procs.items()}
    while running:
        pid, status, usage = os.wait4(-1, 0)  # this child and the descendants it waited for
        if pid not in running:
            continue  # not a variant (a busy process would only end when killed)
        variant = running.pop(pid)
        procs[variant].returncode = os.waitstatus_to_exitcode(status)
        cpu_s, wall_s = usage.ru_utime + usage.ru_stime, time.perf_counter() - STARTED[variant]
        rows.append(finish(args, variant, procs[variant].returncode, logs, cpu_s, wall_s, info))
        write_rows(rows, info, args.out)


def write_rows(rows: list[dict[str, object]], info: dict[str, object], out: str = "") -> Path:
    """bench/results/train-e2e-<host>.csv with each variant's CPU ratio against the notebook's (once it has run)."""
    from chestxray.files import write_csv

    frame = pd.DataFrame(rows)
    if "notebook" in set(frame["variant"]):
        base = float(frame.loc[frame["variant"] == "notebook", "cpu_s"].iloc[0])
        frame["cpu_ratio_vs_notebook"] = (base / frame["cpu_s"]).round(3)
        print("; ".join(f"{v} {r:.2f}x less CPU than the notebook" for v, r in
                        zip(frame["variant"], frame["cpu_ratio_vs_notebook"])), flush=True)
    path = Path(out) if out else results_csv("train-e2e", info)
    write_csv(path, frame)
    return path


if __name__ == "__main__":
    main()
