"""`chestxray ui` opens MLflow on the project's training runs: experiments are tagged as holding training runs (MLflow
3's experimentKind), so the real UI, in headless Chromium, shows an experiment's runs table with the run, and does not
turn to its GenAI layout (an empty Traces page); the command prints each experiment's runs page."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlflow.tracking import MlflowClient

from chestxray.deploy.mlflow_ui import training_pages
from chestxray.training.train import EXPERIMENT_KIND
from tests.deploy.conftest import free_port, running
from tests.report.test_run_report import _browser


def test_ui_prints_and_opens_the_training_runs(trained_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    info = json.loads((trained_run / "run.json").read_text())
    uri, run_id = info["mlflow_tracking_uri"], info["mlflow_run_id"]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(run_id).info.experiment_id
    assert client.get_experiment(experiment).tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]  # set by train
    client.delete_experiment_tag(experiment, EXPERIMENT_KIND[0])  # as a store written before the tag existed
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pages = training_pages(uri, base)
    assert [(name, runs) for name, _, runs in pages] == [("deploy-test", 1)]
    assert pages[0][1] == f"{base}/#/experiments/{experiment}/runs"
    assert client.get_experiment(experiment).tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]  # tagged again
    log = tmp_path / "ui.log"
    with running(["chestxray", "ui", "--store", uri, "--port", str(port)], f"{base}/health", log, timeout=180):
        assert f"training runs of deploy-test (1 run): {pages[0][1]}" in log.read_text()
        driver = _browser(1280, 900)
        try:
            driver.get(f"{base}/#/experiments/{experiment}")  # the experiment itself: MLflow picks the tab
            wait = WebDriverWait(driver, 120)
            wait.until(lambda d: "run" in [e.text for e in d.find_elements(By.CSS_SELECTOR, "a")])
            assert re.search(r"/experiments/\d+/runs", driver.current_url), driver.current_url
            assert "traces" not in driver.current_url
        finally:
            driver.quit()
