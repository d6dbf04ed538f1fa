"""Benchmark: memory and CPU of serving one large 16-bit upload, the issue-22 probe (a 40-megapixel 16-bit PNG of
~90 KB cost the server ~0.64 GB; eight at once took it to 5.9 GB).

Two measurements in this process, each against a baseline run in the same process:
- the 16-bit stretch to uint8 (chestxray.data.imaging.to_uint8, now a lookup table per grey level) against the
  float32 formula it replaces (the same levels: the script checks they are equal), on an 8,000 x 5,000 image:
  peak bytes allocated (tracemalloc, which numpy reports to) and CPU seconds;
- the whole upload decode (chestxray.deploy.uploads.decode_upload: header checks, decode, stretch, model input) of
  that image as a compressed PNG: peak resident memory (ru_maxrss) above the process's resident memory before.
The server decodes at most two uploads at a time (Limits.max_decodes), so its decoding memory is about twice the
second figure whatever the number of clients. Writes bench/results/decode16-<hostname>.csv; no test asserts it.

Run: nice -n 19 .venv/bin/python bench/bench_decode16.py
"""

from __future__ import annotations

import io
import resource
import socket
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chestxray.data.imaging import to_uint8
from chestxray.deploy.uploads import Limits, decode_upload

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 8000, 5000


def _float_stretch(arr: np.ndarray) -> np.ndarray:
    """The stretch as it was: a float32 copy of the image and float temporaries."""
    values = arr.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    return np.clip((values - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _measure(fn, arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(result, peak MB allocated, CPU seconds) of fn(arr)."""
    tracemalloc.start()
    start = time.process_time()
    out = fn(arr)
    cpu = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return out, peak, cpu


def main() -> None:
    pixels = np.zeros((HEIGHT, WIDTH), np.uint16)
    pixels[::7, ::5] = 4000  # a sparse pattern: the PNG compresses to ~90 KB, like the probe
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    png = buffer.getvalue()
    rows = []  # the decode first: ru_maxrss is a high-water mark, the float baseline would hide it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.process_time()
    decode_upload(png, "probe.png", 224, "pad", Limits(max_pixels=WIDTH * HEIGHT))
    cpu = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    rows.append({"what": f"decode_upload {WIDTH}x{HEIGHT} 16-bit PNG ({len(png) / 1e3:.0f} KB)",
                 "baseline_peak_mb": None, "peak_mb": round(max(peak, 0)), "baseline_cpu_s": None,
                 "cpu_s": round(cpu, 3)})
    base, base_peak, base_cpu = _measure(_float_stretch, pixels)
    lut, lut_peak, lut_cpu = _measure(to_uint8, pixels)
    assert np.array_equal(base, lut), "the lookup table must give the float formula's levels"
    rows.append({"what": "stretch 16-bit to uint8", "baseline_peak_mb": round(base_peak), "peak_mb": round(lut_peak),
                 "baseline_cpu_s": round(base_cpu, 3), "cpu_s": round(lut_cpu, 3)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"stretch: {base_peak / lut_peak:.1f}x less memory, {base_cpu / max(lut_cpu, 1e-9):.1f}x less CPU")
    out = HERE / "results" / f"decode16-{socket.gethostname().split('.')[0] or 'host'}.csv"
    out.parent.mkdir(exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
