"""MLflow: a short train + evaluate into a SQLite store leaves the test metrics with CI bounds, the plots and a
pyfunc model that predicts what `chestxray predict` does; the bundle registers by name; `chestxray ui` starts the
real MLflow server, which returns the run's metrics over REST, prints the runs page, which opens on the runs table
in Chromium, and whose run page loads there."""

from __future__ import annotations

import json
import re
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
from chestxray.deploy.mlflow_ui import TRAINING_LAYOUT
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
    log = tmp_path / "ui.log"
    with running(["chestxray", "ui", "--store", uri, "--port", str(port)], f"{base}/health", log, timeout=180):
        got = requests.get(f"{base}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()
        metrics = {m["key"]: m["value"] for m in got["run"]["data"]["metrics"]}
        assert "test_auroc/macro" in metrics and "test_auroc_ci_low/Effusion" in metrics
        experiment = got["run"]["info"]["experiment_id"]
        printed = re.search(r"training runs of deploy-test \(1 run\): (\S+)", log.read_text())
        assert printed, log.read_text()
        driver = _browser(1280, 900)
        try:  # the printed page shows the runs table with the run, not MLflow's GenAI layout (an empty Traces page)
            driver.get(printed.group(1))
            WebDriverWait(driver, 90).until(lambda d: "run" in [e.text for e in d.find_elements(By.CSS_SELECTOR, "a")])
            assert re.search(rf"/experiments/{experiment}/runs\?", driver.current_url), driver.current_url
            assert "genai" not in driver.current_url and "traces" not in driver.current_url
            driver.get(f"{base}/#/experiments/{experiment}/runs/{run_id}?{TRAINING_LAYOUT}")
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


@pytest.fixture(scope="module")
def local_model(store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's logged MLflow model, downloaded to a folder (as `mlflow models serve -m FOLDER` would use it)."""
    uri, _, info = store
    mlflow.set_tracking_uri(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(info["mlflow_model_uri"],
                                                        dst_path=str(tmp_path_factory.mktemp("model"))))
    finally:
        mlflow.set_tracking_uri("")


class _Payload:
    """A pickle that creates a file when unpickled (a harmless stand-in for an attacker's code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_model_is_logged_from_code_and_a_planted_pickle_never_runs(local_model: Path, samples: list[str],
                                                                   tmp_path: Path) -> None:
    """MLflow "models from code": MLmodel names a code file, nothing in the model is a pickle; a python_model.pkl
    planted beside it (the cloudpickle MLflow used to write) is not read by load_model, so its code never runs."""
    import pickle

    import yaml

    flavor = yaml.safe_load((local_model / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"].endswith("code_model") and "model_code_path" in flavor
    assert "python_model" not in flavor  # the key naming a pickled object
    assert not [p for p in local_model.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".ckpt")]
    marker = tmp_path / "payload-ran"
    for where in (local_model / "python_model.pkl", local_model / "artifacts" / "python_model.pkl"):
        where.parent.mkdir(exist_ok=True)
        where.write_bytes(pickle.dumps(_Payload(marker)))
    model = mlflow.pyfunc.load_model(str(local_model))
    assert model.predict(np.asarray(samples[:1])).shape == (1, 14)
    assert not marker.exists(), "loading the model unpickled a planted file"
    pickle.loads((local_model / "python_model.pkl").read_bytes())  # the payload is real: unpickling runs it
    assert marker.exists()


def test_served_model_takes_images_not_paths(local_model: Path, trained_run: Path, samples: list[str],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In an MLflow serving environment a string is base64 image bytes, never a path; with model_config image_root
    only files inside it are read, and a path outside gets the same words whether it exists or not."""
    import base64

    from chestxray.deploy.pyfunc import NO_PATHS
    from chestxray.errors import DataError

    ref = predict_images(trained_run, samples[:2])
    cols = [c for c in ref.columns if c.startswith("p_")]
    encoded = np.asarray([base64.b64encode(Path(p).read_bytes()).decode() for p in samples[:2]], dtype=object)
    blobs = np.asarray([Path(p).read_bytes() for p in samples[:2]], dtype=object)
    data_urls = np.asarray(["data:image/png;base64," + e for e in encoded], dtype=object)
    model = mlflow.pyfunc.load_model(str(local_model))
    for what, data in (("bytes", blobs), ("data URLs", data_urls), ("paths", np.asarray(samples[:2]))):
        assert np.abs(model.predict(data).to_numpy() - ref[cols].to_numpy()).max() < 1e-6, what  # in process

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")  # what MLflow's scoring server sets
    assert np.abs(model.predict(encoded).to_numpy() - ref[cols].to_numpy()).max() < 1e-6
    for probe in ("/etc/passwd", "/etc/shadow", "/no/such/file.png", samples[0]):
        with pytest.raises(DataError) as refused:
            model.predict(np.asarray([probe]))
        assert "not paths" in str(refused.value) and "root:" not in str(refused.value)
    with pytest.raises(DataError, match=NO_PATHS[:40]):
        model.predict(np.asarray(["/etc/shadow"]))

    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(Path(samples[0]).read_bytes())
    (root / "escape.png").symlink_to("/etc/passwd")
    rooted = mlflow.pyfunc.load_model(str(local_model), model_config={"image_root": str(root)})
    got = rooted.predict(np.asarray(["a.png", str(root / "a.png")]))
    assert np.abs(got.to_numpy() - ref[cols].to_numpy()[[0, 0]]).max() < 1e-6
    outside = []
    for probe in ("/etc/passwd", "/no/such/file.png", "../../etc/passwd", "escape.png"):
        with pytest.raises(DataError) as refused:
            rooted.predict(np.asarray([probe]))
        outside.append(str(refused.value))
    assert len(set(outside)) == 1 and "inside the configured image_root" in outside[0], outside
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT")
    strict = mlflow.pyfunc.load_model(str(local_model), model_config={"allow_paths": False})
    with pytest.raises(DataError, match="not paths"):
        strict.predict(np.asarray(samples[:1]))


def test_mlflow_models_serve_answers_no_file_content(local_model: Path, trained_run: Path, samples: list[str],
                                                     tmp_path: Path) -> None:
    """A real `mlflow models serve`: {"inputs": ["/etc/passwd"]} is refused without a byte of the file and with
    the same words as a path that does not exist; base64 image bytes are scored as `chestxray predict` scores."""
    import base64
    import os
    import sys

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # MLflow execs `uvicorn`
    with running([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local_model), "--env-manager",
                  "local", "--host", "127.0.0.1", "--port", str(port)], f"{base}/ping", tmp_path / "serve.log",
                 timeout=180, env={"PATH": path}):
        answers = [requests.post(f"{base}/invocations", json={"inputs": [probe]}, timeout=60)
                   for probe in ("/etc/passwd", "/no/such/file.png")]
        image = base64.b64encode(Path(samples[0]).read_bytes()).decode()
        scored = requests.post(f"{base}/invocations", json={"inputs": [image]}, timeout=60)
    reasons = [a.json()["stack_trace"].strip().splitlines()[-1] for a in answers]  # MLflow puts ours last
    for answer, reason in zip(answers, reasons):
        assert answer.status_code == 400 and "takes images, not paths" in reason, answer.text[-500:]
        assert "root:" not in answer.text and "/etc/passwd" not in reason
    assert reasons[0] == reasons[1]  # no oracle for what exists
    assert scored.status_code == 200, scored.text[:1000]
    ref = predict_images(trained_run, samples[:1])
    got = scored.json()["predictions"][0]
    assert all(abs(got[c] - ref[c].iloc[0]) < 1e-6 for c in ref.columns if c.startswith("p_"))


def test_logged_input_example_is_one_the_served_model_scores(local_model: Path) -> None:
    """The input example is an image as a data: URL (a served model refuses paths), so MLflow's serving check of
    it passes at log time (it warned on every run when the example was a path) and scores here."""
    example = json.loads((local_model / "serving_input_example.json").read_text())
    assert str(example["inputs"][0]).startswith("data:image/png;base64,")
    scored = mlflow.pyfunc.load_model(str(local_model)).predict(np.array(example["inputs"], dtype=object))
    assert len(scored) == 1 and all(c.startswith("p_") for c in scored.columns) and scored.notna().all().all()
