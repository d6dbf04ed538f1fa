"""Training microbenchmark: CPU seconds per image of one training step (forward, loss, backward, Adam) per
architecture, precision and execution variant, against eager PyTorch in the default NCHW layout.

Variants: `eager` (NCHW), `channels_last` (eager, NHWC: the layout oneDNN's convolutions prefer; the product's
default), `compile` (torch.compile, inductor, on the channels_last model: oneDNN for the convolutions and generated,
fused C++ for the element-wise work around them; compiled as `train --compile on` does, with the batch dimension
dynamic). oneDNN Graph fusion proper (torch.jit.enable_onednn_fusion) works
on frozen TorchScript inference graphs only, so for training the fusion on offer is inductor's.
Each (model, precision, variant) runs in its own process (a fresh inductor cache, so compile time is the cold one a
first run pays); the first step's extra CPU over a steady step is the compile cost. Random 1-channel images and
binary labels, batch --batch at --size px; bf16-mixed = torch.autocast(cpu, bfloat16) as Lightning does.

The decision needs the compile cost: `break_even_epochs` = compile CPU seconds / CPU saved per image against eager
channels_last (the product's default; inf where compile saves nothing) / the Kaggle
sample's training images (1,015 at the default 80 % split), i.e. how many epochs of a small realistic run pay for the
compilation (training validates eagerly, so there is no second, eval-mode graph to compile).
Writes bench/results/train-step-<host>.csv.

Run: nice -n 19 .venv/bin/python bench/bench_train_step.py [--models cnn-small,resnet18,efficientnet-lite0,densenet121]
     [--precisions 32-true,bf16-mixed] [--variants eager,channels_last,compile] [--size 128] [--batch 32] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from machine import Clock, describe, machine_info, results_csv

KAGGLE_TRAIN_IMAGES = 1015  # the Kaggle sample's training split (80 % of 1,269 images, by patient)
VARIANTS = ("eager", "channels_last", "compile")


def step_worker(arch: str, precision: str, variant: str, size: int, batch: int, steps: int) -> dict[str, float]:
    """In this process: the first step's and the mean steady step's CPU and wall seconds."""
    import contextlib

    import torch

    from chestxray.models import build_model

    torch.manual_seed(0)
    net = build_model(arch, num_labels=1, in_chans=1).train()
    images = torch.randn(batch, 1, size, size)
    labels = torch.randint(0, 2, (batch, 1)).float()
    if variant in ("channels_last", "compile"):
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    model = net
    if variant == "compile":  # as training compiles it: one graph for every batch size (chestxray.training.execution)
        from chestxray.training.execution import compile_for_training, mark_batch_dynamic

        model = compile_for_training(net)
        images = mark_batch_dynamic(images)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed"
                else contextlib.nullcontext())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(), labels)
        loss.backward()
        optimizer.step()

    clock = Clock().start()
    step()
    first_cpu, first_wall = clock.read()
    step()  # the second step can still allocate or (compile) re-check guards
    clock = Clock().start()
    for _ in range(steps):
        step()
    cpu, wall = clock.read()
    return {"first_cpu_s": first_cpu, "first_wall_s": first_wall, "step_cpu_s": cpu / steps,
            "step_wall_s": wall / steps}


def add_step_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """--size, --batch, --steps and the hidden --worker: what every training-step benchmark takes."""
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=steps, help="steady steps timed after two warm-up steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def answer_worker(args: argparse.Namespace, worker: Callable[..., dict[str, float]]) -> bool:
    """In a worker process (--worker holds its arguments as JSON): run `worker` and print its result as one JSON
    line, then True; else False."""
    if not args.worker:
        return False
    print(json.dumps(worker(*json.loads(args.worker))))
    return True


def run_one(arch: str, precision: str, variant: str, args: argparse.Namespace) -> dict[str, float]:
    """step_worker in a fresh process with its own inductor cache."""
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        # compile threads 1: the C++ compiler runs as this worker's own child, so its CPU is counted
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        clock = Clock().start()
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(
            [arch, precision, variant, args.size, args.batch, args.steps])], capture_output=True, text=True, env=env)
        process_cpu, _ = clock.read()
    if out.returncode != 0:
        tail = " ".join(out.stderr.strip().splitlines()[-1:])
        return {"error": tail[:300]}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_cpu_s": round(process_cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn-small,resnet18,efficientnet-lite0,densenet121")
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    add_step_arguments(parser, steps=4)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    if answer_worker(args, step_worker):
        return
    info = machine_info()
    print(f"training step CPU per image at {args.size} px, batch {args.batch}, on {describe(info)}")
    rows = []
    for arch in args.models.split(","):
        for precision in args.precisions.split(","):
            base = eager_best = None  # eager NCHW; eager channels_last (the product's default)
            for variant in args.variants.split(","):
                got = run_one(arch, precision, variant, args)
                row = {"model": arch, "precision": precision, "variant": variant, "size": args.size,
                       "batch": args.batch, **got}
                if "error" in got:
                    print(f"  {arch:>18} {precision:10s} {variant:13s} failed: {got['error']}", flush=True)
                    rows.append(row)
                    continue
                per_img = got["step_cpu_s"] / args.batch
                base = per_img if variant == "eager" else base
                eager_best = per_img if variant == "channels_last" else eager_best
                compile_cpu = max(0.0, got["first_cpu_s"] - got["step_cpu_s"])
                row.update(cpu_ms_per_img=round(per_img * 1e3, 2),
                           wall_ms_per_img=round(got["step_wall_s"] / args.batch * 1e3, 2),
                           speedup_vs_eager_cpu=round(base / per_img, 3) if base else None,
                           first_step_extra_cpu_s=round(compile_cpu, 1))
                reference = eager_best or base  # compile must beat the best eager variant to be worth it
                saved = (reference - per_img) if reference else 0.0
                if variant == "compile":
                    row["break_even_epochs"] = (round(compile_cpu / saved / KAGGLE_TRAIN_IMAGES, 2) if saved > 0
                                                else float("inf"))
                rows.append(row)
                print(f"  {arch:>18} {precision:10s} {variant:13s} {row['cpu_ms_per_img']:8.1f} CPU ms/img "
                      f"(wall {row['wall_ms_per_img']:8.1f}), {row['speedup_vs_eager_cpu']}x vs eager NCHW"
                      + (f"; compile {compile_cpu:.0f} CPU s, pays off after {row['break_even_epochs']} epochs "
                         f"of {KAGGLE_TRAIN_IMAGES} images" if variant == "compile" else ""), flush=True)
    frame = pd.DataFrame(rows).assign(**info)
    out = args.csv or results_csv("train-step", info)
    frame.to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
