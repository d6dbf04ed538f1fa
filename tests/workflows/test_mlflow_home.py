"""One MLflow store per project, never a folder in the working directory: `tune --workers 2` on a fresh store (no
alembic race) puts its parent run and every trial into OUT/trials/mlflow.db; `study` puts its parent and children
into OUT/runs/mlflow.db with the artifacts beside it; `chestxray ui --store OUT` finds either; a tune killed with -9
and continued draws the parameters an uninterrupted one draws, its killed trial retried and its folder retired."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from chestxray.files import KILL_ENV
from tests.conftest import STUDY_FAST
from tests.workflows.tune_helpers import wait_until_stale

REPO = Path(__file__).resolve().parents[2]
SPACE_YAML = """params:
  lr: {low: 1.0e-4, high: 5.0e-2, log: true}
  loss: [bce, focal]
sampler: {name: tpe, n_startup_trials: 2}
pruner: {name: none}
"""
pytestmark = pytest.mark.slow  # several tune and study processes: a few minutes on 2 cores


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "MLFLOW_TRACKING_URI": ""}


def _tune(prepared: Path, out: Path, trials: int, *extra: str, heartbeat: int = 1) -> list[str]:
    (out.parent / "space.yaml").write_text(SPACE_YAML, encoding="utf-8")
    return [sys.executable, "-m", "chestxray", "tune", str(prepared), "--space", str(out.parent / "space.yaml"),
            "--model", "cnn-tiny", "--epochs", "1", "--trials", str(trials), "--out", str(out), "--heartbeat",
            str(heartbeat), *extra]


def _nothing_in(cwd: Path) -> None:
    assert sorted(p.name for p in cwd.iterdir()) == [], "files written into the working directory"


def test_tune_with_two_workers_keeps_parent_and_trials_in_one_store(synthetic_prepared: Path,
                                                                     tmp_path: Path) -> None:
    from chestxray.deploy.mlflow_ui import store_uri

    cwd, out = tmp_path / "cwd", tmp_path / "tune" / "study"
    cwd.mkdir()
    out.parent.mkdir()
    done = subprocess.run(_tune(synthetic_prepared, out, 2, "--workers", "2", heartbeat=20), env=_env(), cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    _nothing_in(cwd)
    store = out / "trials" / "mlflow.db"
    assert store_uri(out) == f"sqlite:///{store.resolve()}"  # chestxray ui --store OUT opens it
    client = MlflowClient(f"sqlite:///{store}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parents = [r for r in runs if r.data.tags.get("chestxray.kind") == "tune"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1"]
    assert all(r.info.artifact_uri.startswith((out / "trials" / "artifacts").resolve().as_uri()) for r in runs)
    assert "mlflow_uri" not in (out / "best.yaml").read_text()  # a retrain logs beside itself, not into the study


def test_study_keeps_its_artifacts_beside_its_store(synthetic_prepared: Path, tmp_path: Path) -> None:
    cwd, out = tmp_path / "cwd", tmp_path / "s1"
    cwd.mkdir()
    argv = [sys.executable, "-m", "chestxray", "study", str(synthetic_prepared), "--out", str(out), "--models",
            "cnn-tiny", "--seeds", "0", *[a for a in STUDY_FAST if a != "--no-mlflow"]]
    done = subprocess.run(argv, env=_env(), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _nothing_in(cwd)
    client = MlflowClient(f"sqlite:///{out / 'runs' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 2 and any(r.data.tags.get("mlflow.parentRunId") for r in runs)
    assert all(r.info.artifact_uri.startswith((out / "runs" / "artifacts").resolve().as_uri()) for r in runs)


def _params(study: optuna.Study) -> list[dict]:
    return [t.params for t in sorted(study.trials, key=lambda t: t.number) if t.state == TrialState.COMPLETE]


def test_killed_tune_draws_what_an_uninterrupted_one_draws(synthetic_prepared: Path, tmp_path: Path) -> None:
    """TPE past its start-up trials: the same four parameter sets in the same order with or without a kill -9 in
    trial 1; the killed trial is failed, retried once with its own parameters, and its folder moved to
    trials/failed/ without the dead process's lock."""
    whole, broken = tmp_path / "a" / "study", tmp_path / "b" / "study"
    for out in (whole, broken):
        out.parent.mkdir()
    done = subprocess.run(_tune(synthetic_prepared, whole, 4, "--no-mlflow"), env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _params(optuna.load_study(study_name="study", storage=f"sqlite:///{whole / 'study.db'}"))
    assert len(expected) == 4

    storage = f"sqlite:///{broken / 'study.db'}"
    killed = subprocess.run(_tune(synthetic_prepared, broken, 4, "--no-mlflow"), env={**_env(), KILL_ENV: "fit:2"},
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"not killed in trial 1: {killed.stderr[-2000:]}"
    assert (broken / "trials" / "trial-0001" / "config.yaml").is_file()  # trial 1 had started training
    wait_until_stale(storage, "study", 1)
    again = subprocess.run(_tune(synthetic_prepared, broken, 4, "--no-mlflow"), env=_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="study", storage=storage)
    assert _params(study) == expected
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.params == failed[0].params and retry.state == TrialState.COMPLETE
    assert not (broken / "trials" / "trial-0001").exists()
    kept = broken / "trials" / "failed" / "trial-0001"
    assert (kept / "config.yaml").is_file() and not (kept / ".chestxray.lock").exists()
    assert f"retried as trial {retry.number}" in (kept / "FAILED.txt").read_text()
