"""Evaluation results into the run's MLflow run: metrics with CI bounds, thresholds, plots, tables and the report.

The run folder's run.json names the MLflow run (mlflow_run_id) and its store (mlflow_tracking_uri, written by
training; older runs fall back to config.yaml's mlflow_uri, else ./mlruns). A run trained without MLflow is left
alone. Metric keys read as `<split>_<metric>/<finding>`, e.g. test_auroc/Effusion, test_auroc_ci_low/Effusion,
test_auroc/macro, test_auroc/normal (the "No Finding" detection), threshold/Effusion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from chestxray.data.tasks import probability_of
from chestxray.training.train import _allow_file_store

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


def mlflow_target(run_dir: str | Path) -> tuple[str, str] | None:
    """(tracking URI, MLflow run id) recorded for a run folder, or None when it was trained without MLflow."""
    run = Path(run_dir)
    try:
        info = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    run_id = info.get("mlflow_run_id")
    if not run_id:
        return None
    uri = info.get("mlflow_tracking_uri")
    if not uri:
        import yaml

        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
            uri = (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("mlflow_uri")
    return uri or f"file:{Path.cwd() / 'mlruns'}", run_id


def _key(text: str) -> str:
    """An MLflow-safe metric key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def evaluation_metrics(result: Any) -> dict[str, float]:
    """The evaluation's numbers as flat MLflow metrics (n/a values left out)."""
    split, out = result.split, {}

    def put(name: str, who: str, value: float | None) -> None:
        if value is not None and value == value:
            out[_key(f"{split}_{name}/{who}")] = float(value)

    for r in result.summary.rows:
        who = r.name if r.kind == "finding" else r.kind
        put("auroc", who, r.auroc.value)
        put("auroc_ci_low", who, r.auroc.low)
        put("auroc_ci_high", who, r.auroc.high)
        put("auprc", who, r.auprc.value)
        put("auprc_ci_low", who, r.auprc.low)
        put("auprc_ci_high", who, r.auprc.high)
        if r.counts is not None:
            put("sensitivity", who, r.counts.sensitivity)
            put("specificity", who, r.counts.specificity)
            put("f1", who, r.counts.f1)
        put("ece", who, r.ece)
    for name, value in (result.thresholds or {}).items():  # log-odds; logged as probabilities, for people
        out[_key(f"threshold/{name}")] = float(probability_of(value))
    return out


def log_evaluation(run_dir: str | Path, result: Any) -> str | None:
    """Log an EvalResult (metrics, thresholds, RUN/eval files, report.html) to the run's MLflow run; its id or None."""
    target = mlflow_target(run_dir)
    if target is None:
        log.info("%s: no MLflow run recorded (trained with --no-mlflow?); evaluation stays in the folder", run_dir)
        return None
    uri, run_id = target
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    with _allow_file_store(uri):
        client = MlflowClient(tracking_uri=uri)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in evaluation_metrics(result).items()]
        params = [Param(f"eval_{k}", str(v)) for k, v in (("split", result.split), ("tta", result.tta),
                                                         ("threshold_method", result.threshold_method))]
        for start in range(0, len(metrics), 500):  # MLflow takes at most 1000 entities per batch
            client.log_batch(run_id, metrics=metrics[start:start + 500], params=params if start == 0 else [])
        client.log_artifacts(run_id, str(result.eval_dir), "eval")
        report = Path(run_dir) / "report.html"
        if report.exists():
            client.log_artifact(run_id, str(report))
    log.info("logged %d evaluation metrics and %s to MLflow run %s (%s)", len(metrics), result.eval_dir, run_id, uri)
    return run_id


def log_run_file(run_dir: str | Path, path: str | Path, artifact_path: str | None = None) -> str | None:
    """Add one file (e.g. report.html) to the run's MLflow run, when it has one; its id or None."""
    target = mlflow_target(run_dir)
    if target is None:
        return None
    from mlflow.tracking import MlflowClient

    uri, run_id = target
    with _allow_file_store(uri):
        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path), artifact_path)
    return run_id
