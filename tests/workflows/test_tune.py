"""chestxray tune on synthetic data: a pruned 6-trial study whose best.yaml trains again to the same AUROC, two
worker processes on one SQLite storage, and a worker killed with SIGKILL whose study continues."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from chestxray.files import KILL_ENV
from chestxray.training.config import TrainConfig, resolve_config
from chestxray.training.train import train
from chestxray.workflows.search_space import parse_space
from chestxray.workflows.tune import BEST_YAML, REPORT, TuneSettings, best_config, tune
from tests.workflows.tune_helpers import wait_until_stale

REPO = Path(__file__).resolve().parents[2]
# lr spans 1e-7 (learns nothing in 2 epochs) to 5e-2: some trials are bad, and the median pruner stops them
SPACE = {"params": {"lr": {"low": 1e-7, "high": 5e-2, "log": True}, "loss": ["bce", "focal"],
                    "focal_gamma": {"low": 1.0, "high": 3.0}},
         "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}}
SPACE_YAML = """params:
  lr: {low: 1.0e-7, high: 5.0e-2, log: true}
pruner: {name: median, n_startup_trials: 1}
"""
BASE_YAML = "precision: 32-true\nnum_workers: 0\npatience: 0\nbatch_size: 64\n"  # fp32: CPU bf16 is slow here


@pytest.fixture(scope="module")
def no_test_split(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic PREPARED folder with its test shards zeroed (same size, so the size check passes): a tune that
    decoded any test image would fail."""
    copy = tmp_path_factory.mktemp("tune-data") / "prepared"
    shutil.copytree(synthetic_prepared, copy)
    shards = list(copy.glob("test-*.tar"))
    assert shards
    for shard in shards:
        shard.write_bytes(bytes(shard.stat().st_size))
    return copy


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; and the same thread count makes reruns bit-identical
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study_run(no_test_split: Path, tmp_path_factory: pytest.TempPathFactory, one_thread):
    out = tmp_path_factory.mktemp("tune") / "study"
    base = TrainConfig(prepared=str(no_test_split), model="cnn-tiny", epochs=2, batch_size=32, num_workers=0,
                       patience=0, precision="32-true", progress=False, mlflow_uri=f"file:{out.parent / 'mlruns'}")
    settings = TuneSettings(base=base, space=parse_space(SPACE, base, "test space"), out=str(out), trials=6)
    return settings, tune(settings)


def test_six_trials_recorded_some_pruned(study_run) -> None:
    settings, result = study_run
    study = optuna.load_study(study_name=settings.name, storage=settings.storage_url)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert result.pruned >= 1 and result.complete + result.pruned == 6
    for trial in study.trials:  # every trial is a normal run folder, pruned ones too
        run = Path(trial.user_attrs["run_dir"])
        assert (run / "config.yaml").is_file() and (run / "history.csv").is_file() and (run / "bundle").is_dir()
        assert len(trial.intermediate_values) == (1 if trial.state == TrialState.PRUNED else 2)
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert result.best_number == best.number and result.best_value == best.value > 0.7
    html = (Path(settings.out) / REPORT).read_text(encoding="utf-8")
    assert html.count('<img src="data:image/png;base64,') == 4 and html.count('<tr class="state-') == 6


def test_best_yaml_reproduces_best_trial(study_run, tmp_path: Path) -> None:
    settings, result = study_run
    config = best_config(Path(settings.out) / BEST_YAML)  # what `chestxray train --config best.yaml` resolves
    assert config.lr == result.best_params["lr"] and config.loss == result.best_params["loss"]
    again = train(resolve_config(config.to_dict(), {"out": str(tmp_path / "again"), "mlflow": False}))
    assert again.best_val_auroc == pytest.approx(result.best_value, abs=1e-4)  # same seed, same data: tolerance 1e-4


def test_trials_are_mlflow_children_with_auroc_per_epoch(study_run) -> None:
    from mlflow.tracking import MlflowClient

    settings, result = study_run
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = MlflowClient(settings.base.mlflow_uri)
        runs = client.search_runs([client.get_experiment_by_name("chestxray").experiment_id])
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE")
    parents = [r for r in runs if r.data.tags.get("chestxray.kind") == "tune"]
    assert len(parents) == 1 and parents[0].data.metrics["best_val_auroc"] == pytest.approx(result.best_value)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(6))
    for child in children:
        epochs = 1 if child.data.tags["optuna.state"] == "PRUNED" else 2
        assert len(client.get_metric_history(child.info.run_id, "val_auroc")) == epochs
        assert "lr" in child.data.params


def _cli(out: Path, prepared: Path, trials: int, *extra: str, heartbeat: int = 1) -> list[str]:
    """One worker may use a 1 s heartbeat (nobody else can fail its trial as stale); several need one that a loaded
    machine cannot starve past its grace period (2 × heartbeat), or a live trial is failed by the other worker."""
    return [sys.executable, "-m", "chestxray", "tune", str(prepared), "--space", str(out.parent / "space.yaml"),
            "--config", str(out.parent / "base.yaml"),
            "--model", "cnn-tiny", "--epochs", "1", "--trials", str(trials), "--out", str(out), "--no-mlflow",
            "--heartbeat", str(heartbeat), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def two_workers(no_test_split: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tune-workers") / "study"
    (out.parent / "space.yaml").write_text(SPACE_YAML, encoding="utf-8")
    (out.parent / "base.yaml").write_text(BASE_YAML, encoding="utf-8")
    done = subprocess.run(_cli(out, no_test_split, 4, "--workers", "2", heartbeat=30), env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_workers_share_one_storage(two_workers: Path) -> None:
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{two_workers / 'study.db'}")
    numbers = [t.number for t in study.trials]
    assert numbers == [0, 1, 2, 3]  # exactly the four asked for: no trial beyond the count, none failed
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    folders = sorted(p.name for p in (two_workers / "trials").iterdir())
    assert folders == [f"trial-{n:04d}" for n in sorted(numbers)]


def test_killed_worker_study_continues(two_workers: Path, no_test_split: Path) -> None:
    storage = f"sqlite:///{two_workers / 'study.db'}"
    # killed by the product's test-only kill point as its first trial starts training: no race with a fast trial
    proc = subprocess.run(_cli(two_workers, no_test_split, 6), env={**_env(), KILL_ENV: "fit:1"},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    study = optuna.load_study(study_name="study", storage=storage)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1 and (Path(running[0].user_attrs["run_dir"]) / "config.yaml").is_file()
    killed = running[0].number
    wait_until_stale(storage, "study", killed)
    done = subprocess.run(_cli(two_workers, no_test_split, 6), env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="study", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state == TrialState.FAIL  # not reported as complete, not counted
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 6
    assert "study study:" in done.stdout
