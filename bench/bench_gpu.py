"""GPU benchmark, ready to run where a GPU is: DenseNet-121 at 224 px with AMP, images/s per GPU and DDP scaling
1→N, with the input pipeline measured alone so that the GPU never waits for it.

Parts (each row of bench/results/gpu-<host>.csv says which):
1. loader (any machine): the training DataLoader over a PREPARED copy of the Kaggle sample at 224 px, no
   augmentation and the advanced policy, one worker process, so its CPU seconds per image (user + system) say how
   many cores a GPU consuming --target images/s needs: cores = target × CPU s per image. Also the batch assembly
   alone with the augmentation moved to the GPU (uint8 batches; chestxray.data.gpu_augment, kornia), and that GPU
   policy's own cost per image on the CPU (a machine without GPU runs it there, so the figure is an upper bound).
2. gpu (CUDA only): DenseNet-121, 224 px, batch --batch, AMP (bf16 where supported, else fp16 with a GradScaler),
   channels_last, synthetic batches already on the GPU: the compute ceiling, images/s per GPU; then the same fed
   by the real loader (--workers processes) with GPU augmentation, to show whether the GPU waits.
3. ddp (2+ GPUs): the synthetic run under torch.distributed (NCCL, one process per GPU, DistributedDataParallel),
   1→N GPUs: images/s in all, per GPU and scaling efficiency (N-GPU rate / (N × 1-GPU rate)).
Without a GPU it runs part 1, says clearly that no GPU was found and exits 0.

Run: nice -n 19 .venv/bin/python bench/bench_gpu.py [--target 900] [--batch 64] [--steps 30] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from machine import Clock, describe, machine_info, results_csv

HERE = Path(__file__).resolve().parent
SIZE = 224
ARCH = "densenet121"


def prepare_kaggle(work: Path) -> Path:
    """A PREPARED copy of the Kaggle sample at 224 px, every image in the train split."""
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.samples import find_sample_data
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("real samples not found; set CHESTXRAY_DATA to the shared/data folder")
    catalog = assign_splits(read_folder(data / "kaggle-chest-xray-pneumonia"))
    catalog.table["split"] = "train"
    prepare_dataset(catalog, work / "prepared", size=SIZE, workers=os.cpu_count() or 1, shard_size=500)
    return work / "prepared"


def loader_rows(prepared: Path, batch: int, target: float) -> list[dict]:
    """Part 1: CPU seconds per image of the loader (one worker) per policy, and of the GPU policy run on the CPU."""
    from chestxray.data.datamodule import ChestXrayDataModule
    from chestxray.data.gpu_augment import build_gpu_augment

    rows = []
    for policy, where in (("none", "cpu"), ("advanced", "cpu"), ("advanced", "gpu")):
        # no persistent workers: each epoch's worker exits at its end, so its CPU time is counted (RUSAGE_CHILDREN)
        dm = ChestXrayDataModule(prepared, batch_size=batch, num_workers=1, augment=policy if where == "cpu" else
                                 "none", in_chans=1, normalization="imagenet", pin_memory=False,
                                 persistent_workers=False)
        # augmentation on the GPU: the loader only assembles the stored uint8 pixels (normalised on the GPU too)
        make = dm.train_dataloader if where == "cpu" else (lambda: dm.split_dataloader("train", pixels=True))
        for _ in make():  # epoch 1 warms the page cache
            pass
        clock, count = Clock().start(), 0
        for batch_ in make():
            count += batch_["image"].shape[0]
        cpu, wall = clock.read()
        per_image = cpu / count
        rows.append({"part": "loader", "policy": policy, "augment_on": where, "images": count,
                     "cpu_ms_per_img": round(per_image * 1e3, 3), "img_s_one_worker": round(count / wall, 1),
                     "cores_for_target": round(target * per_image, 2), "target_img_s": target})
    augment = build_gpu_augment("advanced", SIZE, seed=0)
    images = torch.randint(0, 256, (batch, 1, SIZE, SIZE), dtype=torch.uint8)
    augment(images)
    clock = Clock().start()
    for _ in range(3):
        augment(images)
    cpu, wall = clock.read()
    per_image = cpu / (3 * batch)
    rows.append({"part": "gpu-policy-on-cpu", "policy": "advanced", "augment_on": "cpu tensors (kornia)",
                 "images": 3 * batch, "cpu_ms_per_img": round(per_image * 1e3, 3),
                 "img_s_one_worker": round(3 * batch / wall, 1), "cores_for_target": round(target * per_image, 2),
                 "target_img_s": target})
    return rows


def _amp() -> tuple[torch.dtype, bool]:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16 with a GradScaler."""
    return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)


def _train_steps(net: torch.nn.Module, batches, steps: int, device: torch.device) -> tuple[float, int]:
    """Seconds and images for `steps` AMP training steps after 5 warm-up steps (CUDA-synchronised)."""
    dtype, scaled = _amp()
    scaler = torch.amp.GradScaler("cuda", enabled=scaled)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    seen, start = 0, 0.0
    for i, (images, labels) in enumerate(batches):
        if i == 5:
            torch.cuda.synchronize(device)
            start, seen = time.perf_counter(), 0
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += images.shape[0]
        if i == 5 + steps - 1:
            break
    torch.cuda.synchronize(device)
    return time.perf_counter() - start, seen


def _synthetic(batch: int, device: torch.device, labels: int = 14):
    images = torch.randn(batch, 1, SIZE, SIZE, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 2, (batch, labels), device=device).float()
    while True:
        yield images, targets


def _model(device: torch.device) -> torch.nn.Module:
    from chestxray.models import build_model

    return build_model(ARCH, num_labels=14, in_chans=1).to(device, memory_format=torch.channels_last).train()


def gpu_rows(prepared: Path, batch: int, steps: int, workers: int) -> list[dict]:
    """Part 2: one GPU, synthetic (compute ceiling) and fed by the real loader with GPU augmentation."""
    from chestxray.data.augment import normalize
    from chestxray.data.datamodule import ChestXrayDataModule
    from chestxray.data.gpu_augment import build_gpu_augment

    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    seconds, seen = _train_steps(_model(device), _synthetic(batch, device), steps, device)
    rows = [{"part": "gpu", "feed": "synthetic (on the GPU)", "gpus": 1, "device": name, "batch": batch,
             "amp": str(_amp()[0]).replace("torch.", ""), "img_s": round(seen / seconds, 1)}]
    augment = build_gpu_augment("advanced", SIZE, seed=0)
    dm = ChestXrayDataModule(prepared, batch_size=batch, num_workers=workers, augment="none", in_chans=1,
                             normalization="imagenet", pin_memory=True)

    def real():
        while True:
            for b in dm.split_dataloader("train", pixels=True):  # uint8 (B, 1, S, S): augmentation on the GPU
                pixels = b["image"].to(device, non_blocking=True)
                images = normalize(augment(pixels), 1, "imagenet").contiguous(memory_format=torch.channels_last)
                yield images, b["labels"].to(device, non_blocking=True).float()

    seconds, seen = _train_steps(_model(device), real(), steps, device)
    rows.append({"part": "gpu", "feed": f"real loader, {workers} workers, advanced policy on the GPU", "gpus": 1,
                 "device": name, "batch": batch, "amp": rows[0]["amp"], "img_s": round(seen / seconds, 1)})
    return rows


def _ddp_worker(rank: int, world: int, batch: int, steps: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    net = torch.nn.parallel.DistributedDataParallel(_model(device), device_ids=[rank])
    seconds, seen = _train_steps(net, _synthetic(batch, device), steps, device)
    if rank == 0:
        out["img_s"] = world * seen / seconds
    dist.destroy_process_group()


def ddp_rows(batch: int, steps: int, one_gpu: float) -> list[dict]:
    """Part 3: 1→N GPUs with DistributedDataParallel on synthetic batches (per-GPU batch `batch`)."""
    import socket

    import torch.multiprocessing as mp

    rows = []
    for world in range(2, torch.cuda.device_count() + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = mp.Manager().dict()
        mp.spawn(_ddp_worker, args=(world, batch, steps, port, out), nprocs=world, join=True)
        rate = float(out["img_s"])
        rows.append({"part": "ddp", "feed": "synthetic (on the GPU)", "gpus": world, "batch": batch,
                     "img_s": round(rate, 1), "img_s_per_gpu": round(rate / world, 1),
                     "scaling_efficiency": round(rate / (world * one_gpu), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=900.0, help="images/s one GPU consumes (DenseNet-121, 224 px)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    info = machine_info()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"GPU benchmark ({ARCH}, {SIZE} px) on {describe(info)}; GPUs: {gpus}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_kaggle(Path(tmp))
        rows = loader_rows(prepared, args.batch, args.target)
        for r in rows:
            print(f"  {r['part']:>18} {r['policy']:8s} augment on {r['augment_on']:>20}: {r['cpu_ms_per_img']:7.2f} CPU "
                  f"ms/img ({r['img_s_one_worker']:.0f} img/s on one worker) -> {r['cores_for_target']:.1f} cores "
                  f"for {args.target:.0f} img/s", flush=True)
        if gpus:
            gpu = gpu_rows(prepared, args.batch, args.steps, args.workers)
            rows += gpu
            if gpus > 1:
                rows += ddp_rows(args.batch, args.steps, gpu[0]["img_s"])
            for r in rows:
                if r["part"] in ("gpu", "ddp"):
                    print(f"  {r['part']:>4} {r['gpus']} GPU(s) {r['feed']}: {r['img_s']:.0f} img/s"
                          + (f" ({r['img_s_per_gpu']:.0f} per GPU, scaling {r['scaling_efficiency']:.2f})"
                             if r["part"] == "ddp" else ""))
    frame = pd.DataFrame(rows).assign(gpus_found=gpus, **info)
    out = args.csv or results_csv("gpu", info)
    frame.to_csv(out, index=False)
    print(f"wrote {out}")
    if not gpus:
        print("no GPU found (torch.cuda.is_available() is False): the GPU and DDP parts were skipped; the loader "
              "figures above are this machine's. Run the same command on a machine with CUDA GPUs for the rest.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
