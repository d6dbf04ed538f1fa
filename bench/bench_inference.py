"""Benchmark: CPU seconds per image scoring through ONNX Runtime (the bundle's cached graph, what `--engine auto`
uses on a CPU) against today's PyTorch path (torch_scorer: eager PyTorch, default threads), in the same process.

For each model (cnn-small, resnet18, efficientnet-lite0) and size (64, 128, 224 px): a bundle with the model's
weights (random init: speed does not depend on their values), real chest X-rays from ../shared/data (Kaggle JPEGs
and NIH PNGs) decoded once by the scoring path's load_pixels, then the network alone (Scorer.score on batches of
--batch images, TTA none), PyTorch and ONNX Runtime alternating for --repeat rounds; the median round's CPU
seconds (user + system, all threads) per image is the figure, wall seconds beside it. Also: decode CPU per image
(load_pixels, the same for both engines), so the end-to-end ratio (decode + network) can be read too; the one-off
export CPU seconds and the cached graph's open time; and the largest |Δp| between the engines with the decisions
at 0.5 that differ (parity is asserted in tests/test_scoring_parity.py; here it guards the figures); and the
arithmetic per image (torch's FLOP counter) with the GFLOP each engine does per CPU second: where onnxruntime is
already near the core's fp32 peak, no fp32 runtime can cut the CPU further. That peak is measured here too (the
best fp32 matrix product torch reaches, machine.fp32_gflops_per_cpu_s), giving each row's floor (the CPU per image
of the network's arithmetic at that rate) and the largest ratio any fp32 engine could reach over PyTorch's path
(max_ratio_cpu): a row whose max_ratio_cpu is below 4 cannot meet the target without changing the arithmetic
(bf16 or int8), which the scoring paths may not do (tests/test_scoring_parity.py: probabilities within 1e-4).

Target (issue 24): >= 4x less CPU per image than the PyTorch path. Writes bench/results/inference-<host>.csv.
PyTorch's threads wait as the product sets them (chestxray.openmp's short spin; column torch_openmp); run with
GOMP_SPINCOUNT=300000 in the environment (and --csv elsewhere) for the PyTorch path as it was before that default:
libgomp's own spin, as the issue measured it.

Run: nice -n 19 .venv/bin/python bench/bench_inference.py [--models cnn-small,resnet18,efficientnet-lite0]
     [--sizes 64,128,224] [--images 64] [--batch 32] [--repeat 3] [--threads N] [--spinning] [--busy N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import chestxray  # noqa: F401, I001 - before torch, as in the CLI: PyTorch's threads get chestxray.openmp's short spin
import torch
from machine import Clock, busy_processes, describe, fp32_gflops_per_cpu_s, machine_info, results_csv

from chestxray.data.samples import find_sample_data
from chestxray.inference.engines import bundle_scorer
from chestxray.inference.onnx_cache import scoring_graph
from chestxray.inference.predict import torch_scorer
from chestxray.inference.scoring import Scorer, load_pixels
from chestxray.models import build_model
from chestxray.models.bundle import read_card, save_bundle
from chestxray.models.registry import model_data_config
from chestxray.openmp import describe_wait

HERE = Path(__file__).resolve().parent
LABELS = [f"finding{i}" for i in range(14)]


def real_images(n: int) -> list[Path]:
    """n real chest X-ray files: Kaggle JPEGs and NIH PNGs alternating."""
    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("real samples not found; set CHESTXRAY_DATA to the shared/data folder")
    jpegs = sorted((data / "kaggle-chest-xray-pneumonia").rglob("*.jpeg"))
    pngs = sorted((data / "nih-chestxray14" / "images").glob("*.png"))
    mixed = [p for pair in zip(jpegs, pngs) for p in pair]
    return (mixed * (n // max(1, len(mixed)) + 1))[:n]


def make_bundle(folder: Path, arch: str, size: int) -> Path:
    torch.manual_seed(0)
    data = model_data_config(arch, 1)
    return save_bundle(folder, build_model(arch, num_labels=len(LABELS), in_chans=1), {
        "architecture": arch, "num_labels": len(LABELS), "in_chans": 1, "image_size": size, "resize": "pad",
        "normalization": data["normalization"], "labels": LABELS, "task": "multilabel"})


def per_image(scorer: Scorer, pixels: np.ndarray, batch: int) -> tuple[float, float, np.ndarray]:
    """(CPU s, wall s) per image for scoring every batch once, and the probabilities."""
    clock = Clock().start()
    probs = np.concatenate([scorer.score(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
    cpu, wall = clock.read()
    return cpu / len(pixels), wall / len(pixels), probs


def gflop_per_image(bundle: Path, size: int) -> float:
    """Floating-point operations of one forward pass (multiply-adds count 2), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from chestxray.models.bundle import load_bundle

    net = load_bundle(bundle).net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, size, size))
    return counter.get_total_flops() / 1e9


def measure(arch: str, size: int, files: list[Path], batch: int, repeat: int, threads: int | None,
            work: Path, spinning: bool = False) -> dict[str, object]:
    bundle = make_bundle(work / f"{arch}-{size}", arch, size)
    card = read_card(bundle)
    clock = Clock().start()
    decoded = np.stack([load_pixels(p, card) for p in files])
    decode_cpu, _ = clock.read()
    clock = Clock().start()
    scoring_graph(bundle, card)  # the one-off export, cached beside the bundle
    export_cpu, export_wall = clock.read()
    clock = Clock().start()
    onnx = bundle_scorer(bundle, engine="onnxruntime", threads=threads)
    open_cpu, _ = clock.read()
    if spinning:  # the product's options but with idle threads busy-waiting (onnxruntime's own default)
        from chestxray.inference.onnx_model import onnx_backend
        from chestxray.inference.runtime import onnxruntime, session_options

        options = session_options(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        session = onnxruntime().InferenceSession(str(bundle / "scoring.onnx"), options,
                                                 providers=["CPUExecutionProvider"])
        onnx = Scorer(card=onnx.card, backend=onnx_backend(session), source=onnx.source, tta=onnx.tta)
    eager = torch_scorer(bundle, device="cpu")
    per_image(onnx, decoded[:batch], batch)  # warm-up: first-call allocations and lazy initialisation
    per_image(eager, decoded[:batch], batch)
    rounds = {"torch": [], "onnxruntime": []}
    for _ in range(repeat):  # alternating, so a change in the machine's load hits both engines alike
        rounds["torch"].append(per_image(eager, decoded, batch))
        rounds["onnxruntime"].append(per_image(onnx, decoded, batch))
    torch_cpu = statistics.median(r[0] for r in rounds["torch"])
    ort_cpu = statistics.median(r[0] for r in rounds["onnxruntime"])
    torch_wall = statistics.median(r[1] for r in rounds["torch"])
    ort_wall = statistics.median(r[1] for r in rounds["onnxruntime"])
    diff = np.abs(rounds["torch"][0][2] - rounds["onnxruntime"][0][2])
    flipped = int(((rounds["torch"][0][2] >= 0.5) != (rounds["onnxruntime"][0][2] >= 0.5)).sum())
    decode = decode_cpu / len(files)
    gflop = gflop_per_image(bundle, size)  # arithmetic per image: CPU seconds x GFLOP/s per core can't go below it
    return {"model": arch, "size": size, "images": len(files), "batch": batch,
            "torch_cpu_ms": round(torch_cpu * 1e3, 3), "ort_cpu_ms": round(ort_cpu * 1e3, 3),
            "ratio_cpu": round(torch_cpu / ort_cpu, 2),
            "torch_wall_ms": round(torch_wall * 1e3, 3), "ort_wall_ms": round(ort_wall * 1e3, 3),
            "ratio_wall": round(torch_wall / ort_wall, 2),
            "decode_cpu_ms": round(decode * 1e3, 3),
            "ratio_cpu_with_decode": round((torch_cpu + decode) / (ort_cpu + decode), 2),
            "export_cpu_s": round(export_cpu, 2), "export_wall_s": round(export_wall, 2),
            "open_cached_cpu_s": round(open_cpu, 3), "max_abs_dp": float(f"{diff.max():.2e}"),
            "flipped_at_0.5": flipped, "ort_threads": threads or "usable cores", "ort_spinning": spinning,
            "torch_openmp": describe_wait(), "gflop_per_img": round(gflop, 3),
            "torch_gflops_per_cpu_s": round(gflop / torch_cpu, 1),
            "ort_gflops_per_cpu_s": round(gflop / ort_cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn-small,resnet18,efficientnet-lite0")
    parser.add_argument("--sizes", default="64,128,224")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the "
                        "usable cores) and torch's (default: torch's own)")
    parser.add_argument("--spinning", action="store_true", help="let onnxruntime's idle threads spin (its own "
                        "default; chestxray turns it off), to measure what that costs")
    parser.add_argument("--busy", type=int, default=0, help="busy processes (a pure Python loop each) running "
                        "beside the scoring: a shared machine")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"scoring CPU per image, PyTorch (today's path) vs ONNX Runtime (cached graph), on {describe(info)}")
    files = real_images(args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, busy_processes(args.busy):
        for arch in args.models.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                row = measure(arch, size, files, args.batch, args.repeat, args.threads, Path(tmp), args.spinning)
                rows.append(row)
                print(f"  {arch:>18} {size:3d} px: torch {row['torch_cpu_ms']:8.2f} CPU ms/img "
                      f"(wall {row['torch_wall_ms']:7.2f}), onnxruntime {row['ort_cpu_ms']:7.2f} "
                      f"(wall {row['ort_wall_ms']:7.2f}): {row['ratio_cpu']:5.2f}x less CPU "
                      f"({row['ratio_wall']:.2f}x wall); with decode ({row['decode_cpu_ms']:.2f} ms) "
                      f"{row['ratio_cpu_with_decode']:.2f}x; export {row['export_cpu_s']:.1f} CPU s once; "
                      f"max |dp| {row['max_abs_dp']:.1e}, {row['flipped_at_0.5']} flipped; {row['gflop_per_img']} "
                      f"GFLOP/img: torch {row['torch_gflops_per_cpu_s']}, onnxruntime {row['ort_gflops_per_cpu_s']} "
                      "GFLOP per CPU second", flush=True)
    peak = fp32_gflops_per_cpu_s()
    frame = pd.DataFrame(rows).assign(busy_processes=args.busy, fp32_peak_gflops_per_cpu_s=round(peak, 1))
    frame["fp32_floor_cpu_ms"] = (frame["gflop_per_img"] / peak * 1e3).round(3)
    frame["max_ratio_cpu"] = (frame["torch_cpu_ms"] / frame["fp32_floor_cpu_ms"]).round(2)
    frame = frame.assign(**{k: v for k, v in info.items()})
    out = args.csv or results_csv("inference", info)
    frame.to_csv(out, index=False)
    below = frame[frame["ratio_cpu"] < 4]
    print(f"target >= 4x less CPU per image: met for {len(frame) - len(below)} of {len(frame)}"
          + (f"; below it: {', '.join(f'{r.model} {r.size} px ({r.ratio_cpu}x)' for r in below.itertuples())}"
             if len(below) else ""))
    bound = below[below["max_ratio_cpu"] < 4]
    print(f"fp32 peak measured here: {peak:.0f} GFLOP per CPU second (torch matrix product); "
          + (f"beyond any fp32 engine (max_ratio_cpu < 4): "
             f"{', '.join(f'{r.model} {r.size} px ({r.max_ratio_cpu}x)' for r in bound.itertuples())}"
             if len(bound) else "every row below the target could reach it in fp32"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
