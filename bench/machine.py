"""What machine a benchmark ran on, so a figure from one machine can be read on another: CPU model, usable cores,
the vector/matrix features that decide fp32 and bf16 speed (AVX2, AVX-512, native bf16: AVX512-BF16 / AMX-BF16),
library versions and the load average; plus CPU-seconds counters (user + system of this process and its threads),
which other load on a shared machine hardly changes, unlike wall time."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chestxray.inference.runtime import usable_cores
from chestxray.training.precision import CPU_BF16_FLAGS, cpuinfo_flags

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict[str, object]:
    """One flat row describing this machine and its libraries (for every CSV row a benchmark writes)."""
    import torch

    flags = cpuinfo_flags() or set()
    info: dict[str, object] = {
        "host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "bf16_native": any(f in flags for f in CPU_BF16_FLAGS),
        "cpu_flags": " ".join(f for f in VECTOR_FLAGS if f in flags) or "none of " + " ".join(VECTOR_FLAGS),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    try:
        from chestxray.inference.runtime import onnxruntime

        info["onnxruntime"] = onnxruntime().__version__
    except Exception:  # noqa: BLE001 - a benchmark without onnxruntime still describes the machine
        info["onnxruntime"] = ""
    return info


def describe(info: dict[str, object]) -> str:
    """The machine in one line."""
    return (f"{info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores, native bf16: "
            f"{'yes' if info['bf16_native'] else 'no'} ({info['cpu_flags']}), torch {info['torch']}, onnxruntime "
            f"{info['onnxruntime'] or '-'}, load average {info['load_avg_1m']}")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_cpu_seconds() -> float:
    """User + system CPU seconds of the child processes waited for so far (DataLoader workers, subprocesses)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Clock:
    """CPU seconds (this process + waited-for children) and wall seconds since start()."""

    cpu0: float = 0.0
    wall0: float = 0.0

    def start(self) -> Clock:
        self.cpu0, self.wall0 = cpu_seconds() + child_cpu_seconds(), time.perf_counter()
        return self

    def read(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since start()."""
        return cpu_seconds() + child_cpu_seconds() - self.cpu0, time.perf_counter() - self.wall0


# Runs the command in argv[2:] and writes its exit code and own rusage to argv[1] as JSON (see run_own_rusage).
LAUNCHER = ("import json, os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); "
            "_, status, usage = os.wait4(child.pid, 0); "
            "json.dump({'code': os.waitstatus_to_exitcode(status), 'cpu_s': usage.ru_utime + usage.ru_stime, "
            "'maxrss_mb': usage.ru_maxrss / 1024}, open(sys.argv[1], 'w'))")


def run_own_rusage(cmd: list[str], log_stem: Path) -> dict[str, float]:
    """Run `cmd` (stdout and stderr to <log_stem>.out / .err) and return its exit code, CPU seconds (user + system,
    with the children it waited for), peak RSS in MB and wall seconds: its own, through a small launcher process,
    because Linux starts a child's peak RSS (ru_maxrss) at its parent's, and a benchmark holding torch and test data
    would lend every command it measures its own gigabyte."""
    usage_file = log_stem.with_suffix(".usage.json")
    start = time.perf_counter()
    with open(log_stem.with_suffix(".out"), "w") as stdout, open(log_stem.with_suffix(".err"), "w") as stderr:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(usage_file), *cmd], stdout=stdout, stderr=stderr)
    seconds = time.perf_counter() - start
    usage = json.loads(usage_file.read_text()) if usage_file.exists() else {"code": -1, "cpu_s": 0.0, "maxrss_mb": 0.0}
    return {**usage, "seconds": seconds}


def fp32_gflops_per_cpu_s(n: int = 2048, repeat: int = 5) -> float:
    """The best fp32 matrix-multiply rate torch reaches here, in GFLOP per CPU second (all threads counted): about
    the cores' fp32 peak, which no fp32 engine's convolutions exceed. Best of `repeat` n x n products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool and packing buffers
    best = 0.0
    for _ in range(repeat):
        clock = Clock().start()
        torch.mm(a, b)
        cpu, _ = clock.read()
        best = max(best, 2 * n**3 / 1e9 / cpu)
    return best


def results_csv(name: str, info: dict[str, object]) -> Path:
    """bench/results/<name>-<host>.csv."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}-{info['host']}.csv"


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """n processes that keep a core busy each (a pure Python loop) while the block runs: a shared machine on demand."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
