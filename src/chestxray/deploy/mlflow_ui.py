"""The MLflow side of deployment: register a bundle as an MLflow model, and run the real MLflow UI on a store.

`chestxray ui` runs `mlflow server` (the full `mlflow` package: pip install 'chestxray[ui]') on the project's
store — runs/mlflow.db by default (or a legacy ./mlruns), the store a run folder names, or a study's or tune's
folder (their runs/mlflow.db, trials/mlflow.db) — bound to loopback unless told otherwise. It prints the page of
each experiment's training runs: MLflow 3 opens in its GenAI layout (an empty Traces page) unless the URL asks for
the model-training one (`workflowType=machine_learning`, MLflow 3.17's switch) or, before 3.17, the experiment is
tagged as holding training runs; the printed pages do both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from chestxray.deploy.guard import GRACE_S, start_guarded
from chestxray.errors import ConfigError, ModelError
from chestxray.evaluation.tracking import mlflow_target

log = logging.getLogger(__name__)


PROJECT_STORES = ("mlflow.db", "runs/mlflow.db", "trials/mlflow.db")  # a runs folder, a study folder, a tune folder
TRAINING_LAYOUT = "workflowType=machine_learning"  # MLflow 3.17's UI: the runs layout, not the GenAI one


def store_uri(store: str | Path | None) -> str:
    """A tracking URI from a URI, a .db file, a run folder, a folder of runs, a study or tune folder (their
    mlflow.db, runs/mlflow.db or trials/mlflow.db) or an mlruns folder; default runs/mlflow.db, else ./mlruns."""
    if store is None:
        for candidate in (Path("runs") / "mlflow.db", Path("mlruns")):
            if candidate.exists():
                return store_uri(candidate)
        raise ConfigError("no MLflow store here (looked for runs/mlflow.db and ./mlruns); pass --store with the "
                          "store's URI, its .db file, an mlruns folder or a run folder")
    text = str(store)
    if "://" in text or text.startswith("file:"):
        return text
    path = Path(text).resolve()
    if path.is_dir() and mlflow_target(path):
        return mlflow_target(path)[0]
    found = next((path / name for name in PROJECT_STORES if (path / name).is_file()), None) if path.is_dir() else None
    if found is not None:
        return f"sqlite:///{found}"
    if path.suffix == ".db":
        if not path.exists():
            raise ConfigError(f"{path}: no such MLflow SQLite store; train with --mlflow-uri sqlite:///{path} first")
        return f"sqlite:///{path}"
    if path.is_dir():
        return f"file:{path}"
    raise ConfigError(f"{store}: not an MLflow store (a URI, a .db file, an mlruns folder or a run folder)")


def training_pages(uri: str, base: str) -> list[tuple[str, str, int]]:
    """(name, URL of its runs page under `base`, runs) per experiment of the store that holds runs, most runs first;
    the URL asks for the model-training layout and each experiment is tagged as holding training runs (MLflow 3's
    experimentKind), so the page opens on the runs table whichever MLflow 3 serves it."""
    from mlflow.tracking import MlflowClient

    from chestxray.training.train import EXPERIMENT_KIND, _allow_file_store

    pages = []
    if not uri.startswith(("sqlite:", "file:", "postgresql", "mysql")):
        return pages  # a tracking server: its own UI, its own tags
    with _allow_file_store(uri):
        client = MlflowClient(tracking_uri=uri)
        for experiment in client.search_experiments():
            runs = len(client.search_runs([experiment.experiment_id], max_results=1000))
            if not runs:
                continue
            if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
            pages.append((experiment.name, f"{base}/#/experiments/{experiment.experiment_id}/runs?{TRAINING_LAYOUT}", runs))
    return sorted(pages, key=lambda page: -page[2])


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line for a store (artifacts of a SQLite store live beside it)."""
    if shutil.which("mlflow") is None and not Path(sys.executable).with_name("mlflow").exists():
        raise ConfigError("the MLflow UI needs the full mlflow package (mlflow-skinny has no server): "
                          "pip install 'chestxray[ui]'")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()]
    return cmd


def run_ui(store: str | Path | None = None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow server in the foreground until interrupted; its exit code."""
    uri = store_uri(store)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"} if uri.startswith("file:") else None
    log.info("mlflow server on %s:%d for %s", host, port, uri)
    # MLflow's server starts a tree of workers: run it under the guard, a process group that is stopped as a whole
    # on Ctrl-C or SIGTERM here, and by the kernel's parent-death signal if this process is killed (-9 included).
    server = start_guarded(ui_command(uri, host, port), env)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return server.wait()
    except KeyboardInterrupt:
        _stop_group(server)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends `chestxray ui` the way Ctrl-C does."""
    raise KeyboardInterrupt


def _stop_group(server: subprocess.Popen) -> None:
    """Ask the guard to stop the server's process group, then kill what is left after its grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=GRACE_S + 5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def register_bundle(source: str | Path, name: str, uri: str | None = None) -> Any:
    """Log a run's bundle as an MLflow pyfunc model in its MLflow run and register it as `name`; the ModelInfo.

    A bare bundle folder (no run) is logged into a new run of experiment 'chestxray-exports' on `uri` (default: the
    SQLite store mlflow.db beside the bundle folder).
    """
    import mlflow

    from chestxray.training.train import _allow_file_store, ensure_experiment, log_pyfunc

    path = Path(source)
    run_dir = path.parent if path.name == "bundle" else path
    bundle = run_dir / "bundle" if (run_dir / "bundle" / "card.json").exists() else path
    if not (bundle / "card.json").exists():
        raise ModelError(f"{source}: not a bundle or run folder (no card.json)")
    target = mlflow_target(run_dir)
    if target is None:
        target_uri = uri or f"sqlite:///{bundle.resolve().parent / 'mlflow.db'}"  # beside the bundle, not in ./
        with _allow_file_store(target_uri):
            client = mlflow.tracking.MlflowClient(tracking_uri=target_uri)
            exp_id = ensure_experiment(client, "chestxray-exports", target_uri)
            run_id = client.create_run(exp_id, run_name=bundle.parent.name).info.run_id
            return log_pyfunc(target_uri, run_id, bundle.parent, bundle, name)
    with _allow_file_store(target[0]):
        return log_pyfunc(target[0], target[1], run_dir, bundle, name)
