"""MLflow: a short train + evaluate into a SQLite store leaves the test metrics with CI bounds, the plots and a
pyfunc model that predicts what `chestxray predict` does; the bundle registers by name; `chestxray ui` starts the
real MLflow server, which returns the run's metrics over REST and whose UI page loads in Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.inference.predict import predict_images
from tests.deploy.conftest import free_port, running
from tests.report.test_run_report import _browser


@pytest.fixture(scope="module")
def store(trained_run: Path) -> tuple[str, str, dict]:
    info = json.loads((trained_run / "run.json").read_text())
    return info["mlflow_tracking_uri"], info["mlflow_run_id"], info


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[str]:
    return [str(p) for p in sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[:4]]


def test_store_holds_test_metrics_with_ci_plots_and_model(store, trained_run: Path) -> None:
    uri, run_id, info = store
    assert uri.startswith("sqlite:///")
    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_run(run_id).data.metrics
    assert 0 <= metrics["test_auroc/macro"] <= 1
    assert metrics["test_auroc_ci_low/macro"] <= metrics["test_auroc/macro"] <= metrics["test_auroc_ci_high/macro"]
    assert "test_auroc/normal" in metrics and "test_sensitivity/Effusion" in metrics
    card = json.loads((trained_run / "bundle" / "card.json").read_text())
    assert metrics["threshold/Effusion"] == pytest.approx(card["thresholds"]["Effusion"])
    eval_files = {Path(a.path).name for a in client.list_artifacts(run_id, "eval")}
    assert {"roc_curves.png", "confusion.png", "calibration.png", "auroc_ci.png"} <= eval_files
    assert info["mlflow_model_uri"].startswith("models:/")


def test_pyfunc_predicts_like_chestxray_predict(store, trained_run: Path, samples: list[str]) -> None:
    """The ordinary load_model(...).predict runs on paths (DataFrame or array) and on pixel arrays of any layout."""
    from chestxray.data.imaging import load_gray
    from chestxray.errors import DataError

    uri, _, info = store
    ref = predict_images(trained_run, samples)
    cols = [c for c in ref.columns if c.startswith("p_")]
    full = np.stack([load_gray(p) for p in samples])  # (N, H, W) uint8 at the files' own size
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(info["mlflow_model_uri"])
        assert model.metadata.metadata["labels"][4] == "Effusion"
        assert model.metadata.get_input_schema().is_tensor_spec() and model.metadata.get_output_schema()
        inputs = {"DataFrame path": pd.DataFrame({"path": samples}), "path array": np.asarray(samples),
                  "uint8 N×H×W": full, "float 0-1 N×H×W×1": full[..., None] / 255.0,
                  "RGB N×H×W×3": np.repeat(full[..., None], 3, axis=-1)}
        for what, data in inputs.items():
            got = model.predict(data)
            assert list(got.columns) == cols, what
            assert np.abs(got.to_numpy() - ref[cols].to_numpy()).max() < 1e-6, what
        one = model.predict(full[0].astype(np.float32))  # (H, W) in [0, 255]
        assert np.abs(one.to_numpy() - ref[cols].to_numpy()[:1]).max() < 1e-6
        with pytest.raises(DataError, match=r"pixel arrays must be .* got uint8 \(2, 4, 4, 2\)"):
            model.predict(np.zeros((2, 4, 4, 2), np.uint8))
    finally:
        mlflow.set_tracking_uri("")


def test_export_registers_the_bundle(store, trained_run: Path) -> None:
    uri, _, _ = store
    result = CliRunner().invoke(app, ["export", str(trained_run), "--mlflow-register", "cxr-test"])
    assert result.exit_code == 0, result.output
    assert "registered models:/" in result.output and "'cxr-test' (version 1)" in result.output
    versions = MlflowClient(tracking_uri=uri).search_model_versions("name='cxr-test'")
    assert [str(v.version) for v in versions] == ["1"]


def test_chestxray_ui_serves_the_run(store, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    uri, run_id, _ = store
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["chestxray", "ui", "--store", uri, "--port", str(port)], f"{base}/health", tmp_path / "ui.log",
                 timeout=180):
        got = requests.get(f"{base}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()
        metrics = {m["key"]: m["value"] for m in got["run"]["data"]["metrics"]}
        assert "test_auroc/macro" in metrics and "test_auroc_ci_low/Effusion" in metrics
        experiment = got["run"]["info"]["experiment_id"]
        driver = _browser(1280, 900)
        try:
            driver.get(f"{base}/#/experiments/{experiment}/runs/{run_id}")
            WebDriverWait(driver, 90).until(lambda d: "run" in d.find_element(By.TAG_NAME, "body").text.lower()
                                            and "test_auroc" in d.page_source)
            assert "MLflow" in driver.title
        finally:
            driver.quit()
    assert not _processes_of(uri), "MLflow server processes outlived `chestxray ui` after it was terminated"


def _processes_of(uri: str, wait: float = 10.0) -> list[int]:
    """Pids of live processes whose command line names `uri`, after giving stopping ones `wait` seconds."""
    import psutil

    deadline = time.monotonic() + wait
    while True:
        pids = [p.pid for p in psutil.process_iter(["cmdline", "status"])
                if uri in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)


def test_ui_store_resolution(store, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chestxray.deploy.mlflow_ui import store_uri, ui_command
    from chestxray.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no MLflow store here"):
        store_uri(None)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"")
    assert store_uri(None) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert store_uri(trained_run) == store[0]  # a run folder names its own store
    with pytest.raises(ConfigError, match="no such MLflow SQLite store"):
        store_uri(tmp_path / "other.db")
    cmd = ui_command(store[0], port=5123)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and "127.0.0.1" in cmd and "--default-artifact-root" in cmd


def test_ui_killed_with_minus_9_leaves_no_mlflow_server(tmp_path: Path) -> None:
    """kill -9 of `chestxray ui` alone (not its group): the kernel's parent-death signal reaches the guard, which
    stops the whole `mlflow server` tree (uvicorn, job runner, huey consumers); the port is free again."""
    import os
    import signal
    import socket

    uri = f"sqlite:///{tmp_path / 'killed.db'}"
    port = free_port()
    with running(["chestxray", "ui", "--store", uri, "--port", str(port)], f"http://127.0.0.1:{port}/health",
                 tmp_path / "ui.log", timeout=180) as proc:
        tree = _processes_of(uri, wait=0)
        assert len(tree) >= 3, tree  # the guard, mlflow's CLI and its server at least
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not _processes_of(uri, wait=40), "mlflow server outlived `chestxray ui` killed with -9"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nobody holds the port any more
