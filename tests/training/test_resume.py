"""Kill a CLI training run with SIGKILL after its first checkpoint, --resume it, and get the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

TOLERANCE = 1e-6  # CPU, one thread, same seed: the resumed run is expected to be bit-for-bit the same


def _command(prepared: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "chestxray", "train", str(prepared), "--model", "cnn-small", "--epochs", "3",
            "--batch-size", "16", "--lr", "3e-3", "--augment", "advanced", "--num-workers", "0", "--out", str(out),
            "--no-mlflow", "--no-progress", "--seed", "7"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_kill_and_resume_matches_uninterrupted_run(tmp_path: Path, synthetic_prepared: Path) -> None:
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(synthetic_prepared, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert last.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "bundle").exists()  # it really was interrupted
    stopped_epoch = torch.load(last, weights_only=True)["epoch"]
    assert stopped_epoch < 2

    resumed = subprocess.run([sys.executable, "-m", "chestxray", "train", "--resume", str(killed)], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best val AUROC" in resumed.stdout

    straight = tmp_path / "straight"
    full = subprocess.run(_command(synthetic_prepared, straight), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]

    a, b = pd.read_csv(straight / "history.csv"), pd.read_csv(killed / "history.csv")
    assert list(b["epoch"]) == [0, 1, 2]
    for column in ("train_loss", "val_loss", "val_auroc", "lr"):
        assert (a[column] - b[column]).abs().max() <= TOLERANCE, column
    steps_a, steps_b = pd.read_csv(straight / "metrics.csv"), pd.read_csv(killed / "metrics.csv")
    assert len(steps_a) == len(steps_b) and steps_a["step"].tolist() == steps_b["step"].tolist()
    final_a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    final_b = torch.load(last, weights_only=True)["state_dict"]
    assert max((final_a[k].float() - final_b[k].float()).abs().max().item() for k in final_a) <= TOLERANCE
