"""Which engine scores, and how ONNX Runtime is set up for it. Imports no torch unless a GPU driver is present.

`--engine auto` (the default): a CUDA GPU that torch can use → PyTorch on the GPU; otherwise ONNX Runtime on the
CPU. Measured idle on 2 cores (docs/performance.md, bench/bench_inference.py) it needed 3.7-5.1x less CPU per image
than PyTorch's eager CPU path for cnn-small and Lite0 at 64-224 px and 1.4-1.8x for resnet18 at 128-224 px; only
for resnet18 at 64 px did the two cost about the same (ONNX Runtime 0.99-1.16x PyTorch's CPU, 1.1-1.2x faster in
wall time), too small a difference for a per-architecture rule. `torch` and `onnxruntime` force one.

ONNX Runtime session options, chosen deliberately:
- intra-op threads = the cores this process may use (CPU affinity, and a cgroup CPU quota where one is set), not
  the machine's core count: more threads than cores only adds context switches, and a container limited to 2 CPUs
  on a 64-core host would otherwise start 64;
- inter-op threads 1 and sequential execution: these are chains of convolutions with little branch parallelism,
  and the intra-op pool already fills the cores;
- graph optimisation ORT_ENABLE_ALL: constant folding, Conv+BatchNorm+activation fusion and, on x86, the NCHWc
  blocked layout that MLAS's convolutions are fastest in (the layout work is done once, at session creation);
- spinning off (session.intra_op.allow_spinning 0): idle pool threads sleep instead of busy-waiting for the next
  operator; on a shared or oversubscribed machine spinning is pure CPU cost (bench/bench_inference.py --spinning
  measures it), and at these batch sizes the wake-up latency is invisible.

onnxruntime is imported with its telemetry off (ORT_DISABLE_TELEMETRY=1 unless the user set that variable): since
1.2x the PyPI wheels for Linux and macOS start Microsoft's 1DS telemetry at import, which writes a session file into
$TMPDIR and would report model and session events from machines that score patients' images.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from chestxray.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnxruntime", "torch")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU when the NVIDIA driver is loaded (Linux)
ROCM_DEVICE = Path("/dev/kfd")  # AMD ROCm compute device
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2 CPU quota: "max 100000" or "200000 100000"
TELEMETRY_OFF = "ORT_DISABLE_TELEMETRY"  # onnxruntime's opt-out, read once when it initialises


def check_engine(engine: str) -> None:
    """Refuse an unknown --engine with the valid ones (ConfigError)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def gpu_present() -> bool:
    """Whether torch can use a CUDA (or ROCm) GPU here; torch is imported only where a GPU driver is present."""
    if sys.modules.get("torch") is None:  # not loaded (or blocked): ask the driver before importing it
        has_driver = ROCM_DEVICE.exists() or (NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir()))
        if not has_driver:
            return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(engine: str = "auto", device: str | None = None) -> str:
    """'onnxruntime' or 'torch' for the requested engine and torch device (see the module doc).

    A device other than the CPU means torch; 'auto' without a device means torch only where a GPU is present."""
    check_engine(engine)
    on_gpu = device is not None and str(device) != "cpu"
    if engine == "onnxruntime" and on_gpu:
        raise ConfigError(f"--engine onnxruntime runs on the CPU; device {device!r} needs --engine torch (or auto)")
    if engine != "auto":
        return engine
    if on_gpu or (device is None and gpu_present()):
        return "torch"
    return "onnxruntime"


def onnxruntime() -> Any:
    """The onnxruntime module, imported with its telemetry off (see the module doc); ModelError when missing."""
    os.environ.setdefault(TELEMETRY_OFF, "1")  # a user's own setting wins
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("onnxruntime is not installed; pip install onnxruntime") from None
    return ort


def session_options(threads: int | None = None) -> Any:
    """onnxruntime.SessionOptions as the module doc explains; `threads` None: usable_cores()."""
    ort = onnxruntime()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are not the user's
    return options


def open_session(model: str | Path | bytes, threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession on the CPU for a .onnx file or serialised bytes (session_options)."""
    ort = onnxruntime()

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
