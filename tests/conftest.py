"""Shared fixtures: the real samples in ../shared/data (by path, never copied) and tmp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from chestxray.data.samples import ENV_VAR, find_sample_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample collections (../shared/data beside the checkout; override with CHESTXRAY_DATA)."""
    root = find_sample_data(REPO)
    if root is None:
        pytest.skip(f"real samples not found beside {REPO}; set {ENV_VAR} to the shared/data folder")
    return root


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREPARED folder (32 px) of 600 synthetic NIH-layout images: a small CNN learns it in two epochs."""
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits
    from chestxray.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("synthetic-prepared")
    source = make_synthetic(root / "source", n=600, size=64, seed=0)
    catalog = assign_splits(read_nih(source / "labels.csv", source / "images"), seed=0)
    prepare_dataset(catalog, root / "prepared", size=32, workers=0)
    return root / "prepared"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing reaches the internet: downloads are off unless a test turns them on against its loopback server."""
    monkeypatch.setenv("CHESTXRAY_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


STUDY_FAST = ["--set", "epochs=1", "--set", "batch_size=32", "--set", "num_workers=0", "--set", "lr=3e-3",
              "--set", "augment=none", "--n-boot", "40", "--no-mlflow"]
STUDY_ARGV = ["--models", "cnn-tiny,cnn-small", "--seeds", "0,1", *STUDY_FAST]


@pytest.fixture(scope="session")
def finished_study(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 2 models x 2 seeds study, started in a process that is SIGKILLed once the first run has finished,
    then re-run in this process (counting what it trains)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    import chestxray.training.train as training
    from chestxray.cli import app
    from chestxray.workflows import study as st

    out = tmp_path_factory.mktemp("study") / "s1"
    argv = ["study", str(synthetic_prepared), "--out", str(out), *STUDY_ARGV]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "chestxray", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "runs" / "cnn-tiny_seed0" / st.DONE
    try:
        deadline = time.monotonic() + 300
        while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.is_file(), "the first run did not finish"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = sorted(p.parent.name for p in out.glob("runs/*/" + st.DONE))
    stamp = first.stat().st_mtime_ns
    trained: list[str] = []
    real = training.train

    def counting(config, *args, **kwargs):
        trained.append(Path(config.out).name)
        return real(config, *args, **kwargs)

    training.train = counting
    try:
        result = CliRunner().invoke(app, argv)
    finally:
        training.train = real
    assert result.exit_code == 0, result.output
    return {"out": out, "finished_before": finished, "trained": trained, "stamp": stamp, "first": first,
            "output": result.output}


@pytest.fixture(scope="session")
def merged_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREPARED folder (32 px) of three synthetic sources annotating different findings (tests/merged_data.py)."""
    from tests.merged_data import merged_prepared as build

    return build(tmp_path_factory.mktemp("merged"))
