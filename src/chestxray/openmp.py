"""How long PyTorch's idle CPU threads busy-wait: a short spin, then sleep. Set before torch loads; run.json says
what applied.

PyTorch's Linux wheels run their CPU kernels in GNU OpenMP's (libgomp's) thread pool. After each parallel region an
idle libgomp thread spins GOMP_SPINCOUNT times (300,000 by default) before it sleeps. On an idle machine that costs
little; when the cores are shared (the DataLoader's workers decoding beside the training step, a second job, several
tune or study workers) the spinning threads take the CPU from the work they wait for. Measured on 2 cores with one
busy process beside an fp32 training step at 128 px (bench/bench_omp.py, docs/performance.md): libgomp's default
cost 2.4x (resnet18), 1.5x (cnn-small) and 3.4x (Lite0) the CPU seconds, and about as much wall time, of
chestxray's SPINCOUNT; on the idle machine the two were within 10 % of each other in CPU and wall time. 1,000 spins
did as well as no spinning (OMP_WAIT_POLICY=PASSIVE) under sharing and kept pace with the default when idle; 10,000
was up to 22 % dearer under sharing. ONNX Runtime's pool is set up the same way (spinning off,
chestxray.inference.runtime).

libgomp reads its environment once, when torch loads it, so this works only where chestxray is imported before
torch (the CLI always is). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is.
"""

from __future__ import annotations

import os
import sys

SPINCOUNT = "1000"
_USER_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_state = {"set_by_chestxray": False, "torch_loaded_first": False}


def set_default_wait() -> None:
    """Set GOMP_SPINCOUNT to chestxray's short spin unless the user chose a wait policy or torch is already loaded."""
    if any(name in os.environ for name in _USER_VARIABLES):
        return
    if "torch" in sys.modules:
        _state["torch_loaded_first"] = True
        return
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    _state["set_by_chestxray"] = True


def describe_wait() -> str:
    """What governs OpenMP's idle threads in this process, in words (recorded in run.json as `openmp_wait`)."""
    if _state["set_by_chestxray"]:
        return f"GOMP_SPINCOUNT={SPINCOUNT} (chestxray's default: a short spin, then sleep)"
    chosen = [f"{name}={os.environ[name]}" for name in _USER_VARIABLES if name in os.environ]
    if chosen:
        return ", ".join(chosen) + " (set by you)"
    if _state["torch_loaded_first"]:
        return ("libgomp's default (300,000 spins): torch was imported before chestxray; import chestxray first, "
                f"or set GOMP_SPINCOUNT={SPINCOUNT} before starting Python")
    return "libgomp's default (300,000 spins)"
