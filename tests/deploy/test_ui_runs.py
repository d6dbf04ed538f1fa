"""`chestxray ui` points at the project's training runs: each experiment with runs gets a runs page that asks for
MLflow's model-training layout (not its GenAI one, an empty Traces page) and the experimentKind tag that older MLflow 3
reads, re-set on a store written before the tag existed. The page itself is loaded in Chromium by
tests/deploy/test_mlflow.py, beside the server it already starts."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from chestxray.deploy.mlflow_ui import TRAINING_LAYOUT, training_pages
from chestxray.training.train import EXPERIMENT_KIND


def test_training_pages_ask_for_the_runs_layout_and_tag_old_stores(trained_run: Path) -> None:
    info = json.loads((trained_run / "run.json").read_text())
    uri = info["mlflow_tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(info["mlflow_run_id"]).info.experiment_id
    assert client.get_experiment(experiment).tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]  # set by train
    client.delete_experiment_tag(experiment, EXPERIMENT_KIND[0])  # as a store written before the tag existed
    client.create_experiment("empty")  # no runs: no page
    pages = training_pages(uri, "http://127.0.0.1:5000")
    assert pages == [("deploy-test", f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?{TRAINING_LAYOUT}", 1)]
    assert TRAINING_LAYOUT == "workflowType=machine_learning"
    assert client.get_experiment(experiment).tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]  # tagged again
    assert training_pages("http://tracking.example:5000", "http://x") == []  # a server's UI is its own
