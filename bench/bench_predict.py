"""Benchmark: `chestxray predict` as a user runs it, on a folder of 2,000 files (real samples repeated under new names
+ 5 broken), through each engine, every figure per whole process (import, model load, decode, scoring).

Checks the row count (2,000 + 5) and that exactly the 5 broken files are quarantined with a reason. Per process:
CPU seconds (user + system, from the kernel's own account of that one process), wall seconds, images/s
and peak RSS (its own: machine.run_own_rusage). The bundle's ONNX graph is exported (and cached beside it, as predict's first call does) before the
runs, its CPU reported apart. Runs, in order: the baseline folder of 200 files with `--engine auto` (on a CPU: ONNX
Runtime), the 2,000 files with `--engine auto`, and the same 2,000 with `--engine torch`: the CPU ratio torch /
auto is what a user saves per folder, and the peak RSS ratio 2,000 / 200 files (auto) should stay near 1x because
predict streams in batches. The model is a bundle of --model at --size px (random weights: the scores are not the
point; speed does not depend on them).

Run: .venv/bin/python bench/bench_predict.py [--files 2000] [--baseline 200] [--model cnn-small] [--size 64]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import chestxray  # noqa: F401, I001 - before torch, as in the CLI
import pandas as pd
import torch
from machine import Clock, describe, machine_info, results_csv, run_own_rusage

from chestxray.data.labels import NIH14
from chestxray.data.samples import NIH, find_sample_data
from chestxray.inference.onnx_cache import scoring_graph
from chestxray.models import build_model
from chestxray.models.bundle import read_card, save_bundle
from chestxray.models.registry import model_data_config

HERE = Path(__file__).resolve().parent
BROKEN = {"truncated.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "notes.png": b"patient notes, not an image\n",
          "empty.png": b"", "bad.jpeg": b"\xff\xd8\xff\xe0garbage", "bad.dcm": b"\0" * 128 + b"DICM" + b"\x02" * 20}


def make_folder(root: Path, n: int, samples: list[Path]) -> Path:
    """n copies of the samples under new names in nested folders, plus the broken files."""
    for i in range(n):
        src = samples[i % len(samples)]
        dst = root / f"batch{i // 500:02d}" / f"scan-{i:05d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for name, data in BROKEN.items():
        (root / "batch00" / name).write_bytes(data)
    return root


def run_predict(bundle: Path, folder: Path, out: Path, engine: str, logs: Path) -> dict[str, float]:
    """CPU seconds, wall seconds and peak RSS (MB) of one `chestxray predict` process, its own (run_own_rusage)."""
    cmd = [sys.executable, "-m", "chestxray", "predict", str(bundle), str(folder), "--format", "csv", "--out", str(out),
           "--engine", engine]
    got = run_own_rusage(cmd, logs / out.stem)
    if got["code"] != 0:
        raise SystemExit(f"predict failed ({got['code']}): {(logs / f'{out.stem}.err').read_text()[-2000:]}")
    return {"cpu_s": round(got["cpu_s"], 2), "seconds": round(got["seconds"], 2),
            "peak_rss_mb": round(got["maxrss_mb"], 1)}


def make_bundle(folder: Path, arch: str, size: int) -> Path:
    torch.manual_seed(0)
    data = model_data_config(arch, 1)
    return save_bundle(folder, build_model(arch, num_labels=len(NIH14), in_chans=1), {
        "architecture": arch, "num_labels": len(NIH14), "in_chans": 1, "image_size": size, "resize": "pad",
        "normalization": data["normalization"], "labels": list(NIH14), "thresholds": {n: 0.5 for n in NIH14}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=200)
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("real samples not found; set CHESTXRAY_DATA to the shared/data folder")
    samples = sorted((data / NIH / "images").glob("*.png"))
    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = make_bundle(work / "bundle", args.model, args.size)
        clock = Clock().start()
        scoring_graph(bundle, read_card(bundle))  # the one-off export, cached beside the bundle as predict's would be
        export_cpu, _ = clock.read()
        folders = {n: make_folder(work / f"scans{n}", n, samples) for n in (args.baseline, args.files)}
        for n, engine in ((args.baseline, "auto"), (args.files, "auto"), (args.files, "torch")):
            out = work / f"preds{n}-{engine}.csv"
            got = run_predict(bundle, folders[n], out, engine, work)
            preds = pd.read_csv(out)
            bad = preds[preds["status"] == "quarantined"]
            assert len(preds) == n + len(BROKEN), (len(preds), n)
            assert sorted(Path(p).name for p in bad["path"]) == sorted(BROKEN), bad["path"].tolist()
            assert bad["reason"].str.len().gt(0).all()
            rows.append({"model": args.model, "size": args.size, "engine": engine, "files": n,
                         "broken": len(BROKEN), "rows": len(preds), "quarantined": len(bad), **got,
                         "cpu_ms_per_img": round(got["cpu_s"] / n * 1e3, 2), "img_s": round(n / got["seconds"], 1)})
    base, big, eager = rows
    rss_ratio = big["peak_rss_mb"] / base["peak_rss_mb"]
    cpu_ratio = eager["cpu_s"] / big["cpu_s"]
    print(f"predict on folders of real sample copies + {len(BROKEN)} broken files ({args.model}, {args.size} px) "
          f"on {describe(info)}")
    for r in rows:
        print(f"  {r['files']:6d} files, --engine {r['engine']:5s}: {r['rows']} rows, {r['quarantined']} quarantined "
              f"with reasons; {r['cpu_s']:.1f} CPU s ({r['cpu_ms_per_img']:.2f} ms/img), {r['seconds']:.1f} s wall "
              f"({r['img_s']:.0f} img/s), peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  whole process, {args.files} files: --engine torch / auto = {cpu_ratio:.2f}x the CPU seconds "
          f"({eager['seconds'] / big['seconds']:.2f}x the wall time)")
    print(f"  the graph's one-off export (cached beside the bundle before these runs): {export_cpu:.1f} CPU s")
    print(f"  peak RSS ratio {big['files']} / {base['files']} files: {rss_ratio:.2f}x (bounded memory: near 1x)")
    frame = pd.DataFrame(rows).assign(rss_ratio=round(rss_ratio, 3), cpu_ratio_torch_auto=round(cpu_ratio, 2),
                                      export_cpu_s=round(export_cpu, 2), **info)
    out_csv = args.csv or results_csv(f"predict-{args.model}-{args.size}", info)
    frame.to_csv(out_csv, index=False)
    print(f"wrote {out_csv}")


if __name__ == "__main__":
    main()
