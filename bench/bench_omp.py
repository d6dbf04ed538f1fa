"""OpenMP's idle threads and the CPU a training step costs: libgomp's default spin (300,000) against chestxray's
short spin (chestxray.openmp.SPINCOUNT), no spin (OMP_WAIT_POLICY=PASSIVE) and one thread.

Each setting runs one eager channels_last training step (forward, loss, backward, Adam; 1-channel random images,
batch --batch at --size px, fp32 unless --precision) in its own fresh process, whose environment holds exactly that
setting (libgomp reads it once, when torch loads it); settings alternate within each round and the median of
--rounds rounds is kept, so slow drift in the machine's load reaches all of them alike. CPU = user + system seconds
of the process over the timed steps. `--busy 0,1` repeats it all beside N busy processes (a pure Python loop
each, at normal priority): the cores shared, as with the DataLoader's worker processes decoding beside the training
step or another user's job, which is where waiting threads that spin cost the most. Writes
bench/results/omp-<host>.csv.

Run: nice -n 19 .venv/bin/python bench/bench_omp.py [--models resnet18,cnn-small,efficientnet-lite0] [--size 128]
     [--batch 32] [--steps 6] [--rounds 3] [--precision 32-true] [--busy 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import pandas as pd
from bench_train_step import add_step_arguments, answer_worker
from machine import busy_processes, describe, machine_info, results_csv

from chestxray.openmp import SPINCOUNT

SETTINGS = {  # name → the process's OpenMP variables (and torch threads)
    "libgomp-default": {"GOMP_SPINCOUNT": "300000"},
    "chestxray": {"GOMP_SPINCOUNT": SPINCOUNT},
    "spin-10000": {"GOMP_SPINCOUNT": "10000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"GOMP_SPINCOUNT": SPINCOUNT, "OMP_NUM_THREADS": "1"},
}


def step_worker(arch: str, size: int, batch: int, steps: int, precision: str) -> dict[str, float]:
    """In this process: CPU and wall ms per image of `steps` eager channels_last training steps (bench_train_step's)."""
    import torch
    from bench_train_step import step_worker as train_step

    got = train_step(arch, precision, "channels_last", size, batch, steps)
    return {"cpu_ms_per_img": got["step_cpu_s"] / batch * 1e3, "wall_ms_per_img": got["step_wall_s"] / batch * 1e3,
            "torch_threads": torch.get_num_threads()}


def run_one(setting: str, arch: str, args: argparse.Namespace) -> dict[str, float]:
    """step_worker in a fresh process whose environment holds exactly this setting's OpenMP variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(SETTINGS[setting])
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(
        [arch, args.size, args.batch, args.steps, args.precision])], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{setting} {arch} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,cnn-small,efficientnet-lite0")
    add_step_arguments(parser, steps=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--busy", default="0,1", help="busy processes beside the measurement, one pass each")
    args = parser.parse_args()
    if answer_worker(args, step_worker):
        return
    info = machine_info()
    print(f"training step per image, eager channels_last, {args.precision}, {args.size} px, batch {args.batch}, "
          f"median of {args.rounds} rounds, on {describe(info)}")
    rows = []
    for busy, arch in [(int(b), a) for b in args.busy.split(",") for a in args.models.split(",")]:
        got: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
        with busy_processes(busy):
            for _ in range(args.rounds):
                for name in SETTINGS:
                    got[name].append(run_one(name, arch, args))
        base = statistics.median(r["cpu_ms_per_img"] for r in got["libgomp-default"])
        for name, runs in got.items():
            cpu = statistics.median(r["cpu_ms_per_img"] for r in runs)
            wall = statistics.median(r["wall_ms_per_img"] for r in runs)
            variables = " ".join(f"{k}={v}" for k, v in SETTINGS[name].items())
            rows.append({"model": arch, "busy_processes": busy, "setting": name, "variables": variables,
                         "precision": args.precision, "size": args.size, "batch": args.batch,
                         "cpu_ms_per_img": round(cpu, 2), "wall_ms_per_img": round(wall, 2),
                         "less_cpu_than_default": round(base / cpu, 3), "rounds": args.rounds,
                         **{k: v for k, v in info.items() if k != "torch_threads"},
                         "torch_threads": runs[0]["torch_threads"]})
            print(f"  busy {busy} {arch:>18} {name:16s} {cpu:7.1f} CPU ms/img (wall {wall:7.1f})  "
                  f"{base / cpu:5.2f}x less CPU than libgomp's default", flush=True)
    out = results_csv("omp", info)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
