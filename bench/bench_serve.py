"""Benchmark: bounded load test of `chestxray serve` on loopback (a fixed number of requests, then it stops).

Starts the server as its own process on a free port (a cnn-small bundle at 64 px, random weights), sends
--requests POST /predict uploads of real sample images from --clients concurrent clients, and reports errors
(must be 0), latency p50/p95/p99, requests/s and the server's peak RSS (VmHWM). Baseline in the same run: the
same images scored one at a time through the library (ModelService.predict, no HTTP), so the ratio shows what
HTTP, multipart and JSON add. Writes bench/results/serve-<hostname>.csv.

Run: .venv/bin/python bench/bench_serve.py [--requests 300] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests
import torch

from chestxray.data.labels import NIH14
from chestxray.data.samples import NIH, find_sample_data
from chestxray.deploy.serve import ModelService
from chestxray.deploy.uploads import Limits
from chestxray.models import build_model
from chestxray.models.bundle import save_bundle

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM) from /proc, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(ms: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"serve-{socket.gethostname()}.csv")
    args = parser.parse_args()
    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("real samples not found; set CHESTXRAY_DATA to the shared/data folder")
    images = [(p.name, p.read_bytes()) for p in sorted((data / NIH / "images").glob("*.png"))[:50]]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        bundle = save_bundle(Path(tmp) / "bundle", build_model("cnn-small", num_labels=14), {
            "architecture": "cnn-small", "num_labels": 14, "in_chans": 1, "image_size": 64, "resize": "pad",
            "normalization": "gray", "labels": list(NIH14), "thresholds": {n: 0.5 for n in NIH14}})
        service = ModelService(bundle, Limits())
        lib_ms = []
        for i in range(min(args.requests, 100)):
            name, body = images[i % len(images)]
            start = time.perf_counter()
            service.predict(body, name)
            lib_ms.append((time.perf_counter() - start) * 1000)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "chestxray", "serve", str(bundle), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"{url}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)
            sessions = [requests.Session() for _ in range(args.clients)]

            def one(i: int) -> tuple[float, int]:
                name, body = images[i % len(images)]
                start = time.perf_counter()
                try:
                    r = sessions[i % args.clients].post(f"{url}/predict", files={"file": (name, body)}, timeout=60)
                    ok = r.status_code == 200 and len(r.json()["findings"]) == 14
                except requests.RequestException:
                    ok = False
                return (time.perf_counter() - start) * 1000, int(not ok)

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
            alive = requests.get(f"{url}/health", timeout=10).ok
            peak = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    ms = [r[0] for r in results]
    errors = sum(r[1] for r in results)
    row = {"requests": args.requests, "clients": args.clients, "errors": errors, **percentiles(ms),
           "req_s": round(args.requests / wall, 1), "server_peak_rss_mb": round(peak, 1),
           "library_p50_ms": round(float(np.median(lib_ms)), 1), "health_after": alive,
           "http_over_library_p50": round(float(np.median(ms)) / float(np.median(lib_ms)), 2),
           "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"{args.requests} POST /predict from {args.clients} clients on loopback (cnn-small 64 px, "
          f"{os.cpu_count()} CPUs, load average {row['load_avg_1m']}):")
    print(f"  errors {errors}, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms, "
          f"{row['req_s']} req/s, server peak RSS {row['server_peak_rss_mb']:.0f} MB, /health after: {alive}")
    print(f"  library baseline (no HTTP, one at a time): p50 {row['library_p50_ms']} ms; "
          f"HTTP p50 / library p50 under {args.clients}-way load: {row['http_over_library_p50']}×")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")
    if errors:
        raise SystemExit(f"{errors} request(s) failed")


if __name__ == "__main__":
    main()
