"""Shared by the deploy tests: one small trained + evaluated run (cnn-tiny, 32 px, SQLite MLflow store) and a
helper that starts a real server process on a free loopback port and stops it afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_run(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained in the test (1 epoch) into a SQLite MLflow store, then evaluated (thresholds in the card)."""
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.training.config import TrainConfig
    from chestxray.training.train import train

    root = tmp_path_factory.mktemp("deploy-run")
    config = TrainConfig(prepared=str(synthetic_prepared), model="cnn-tiny", epochs=1, batch_size=32, lr=3e-3,
                         num_workers=0, out=str(root / "run"), mlflow_uri=f"sqlite:///{root / 'mlflow.db'}",
                         experiment="deploy-test", progress=False, accelerator="cpu", patience=0)
    train(config)
    evaluate_run(root / "run", n_boot=20, batch_size=128)
    return root / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args: list[str], url: str, log: Path, timeout: float = 120.0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """Start `python -m chestxray ARGS` (or another command), wait until `url` answers, stop it at the end.

    `env` adds to (or overrides) this process's environment; `cwd` is the server's working directory.
    A server that does not come up fails the test with its log: never skipped.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           **(env or {})}
    cmd = args if args[0] != "chestxray" else [sys.executable, "-m", "chestxray", *args[1:]]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{' '.join(cmd)} did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc
    finally:  # stop the server and everything it started (its own process group), even if it left children
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def server(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`chestxray serve` of the trained run on a free loopback port, one process for every test that only asks it."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running(["chestxray", "serve", str(trained_run), "--port", str(port)], f"http://127.0.0.1:{port}/health",
                 log):
        yield f"http://127.0.0.1:{port}"
