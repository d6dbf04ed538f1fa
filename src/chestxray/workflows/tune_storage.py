"""Where a tuning study lives: the Optuna RDB storage (SQLite file or PostgreSQL server, with heartbeats) and the
study's MLflow parent run, shared by every process that works on the study."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from chestxray.errors import ConfigError
from chestxray.training.config import TrainConfig
from chestxray.training.train import _allow_file_store, _tracking_uri, ensure_experiment

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"


def redact(url: str) -> str:
    """The storage URL with any password shown as ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: nothing to hide
        return url


def has_password(url: str) -> bool:
    """True when a storage URL carries a password (which a command line would show to every user in `ps`)."""
    try:
        from sqlalchemy.engine import make_url

        return bool(make_url(url).password)
    except Exception:  # not a URL SQLAlchemy can parse: nothing to hide
        return False


def _how_to_check(url: str) -> str:
    if url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        where = "in the URL" if parsed.password else "in ~/.pgpass (host:port:database:user:password, mode 0600) " \
            "or PGPASSWORD"
        return (f"check that the server runs and accepts connections from this machine (pg_isready -h "
                f"{parsed.host or 'localhost'} -p {parsed.port or 5432}), the user and database {parsed.database!r} "
                f"in the URL and the user's rights on it, and the password {where} (psql '{redact(url)}' -c "
                "'select 1')")
    if url.startswith("sqlite"):
        return "check that the folder of the database file exists and is writable"
    return "check the URL (dialect+driver://user:password@host:port/database) and that its server is reachable"


def open_storage(url: str, heartbeat: int = 60) -> Any:
    """Optuna's RDBStorage at `url` with heartbeats (a trial silent for 2 × heartbeat s is failed as stale).

    Connects at once, so an unreachable server is a ConfigError naming it and saying how to check it.
    """
    import optuna
    import sqlalchemy.exc

    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # several worker processes write to one file
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what failing stale trials needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)  # a killed trial runs again
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                              grace_period=2 * heartbeat, heartbeat_stale_trial_callback=retry)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        reason = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"--storage {redact(url)} cannot be reached or used ({reason}); {_how_to_check(url)}"
                          ) from None


def fail_stale(study: Any) -> None:
    """Mark trials whose process stopped sending heartbeats as failed (Optuna flags this API experimental)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def tag_run(base: TrainConfig, run_id: str, tags: dict[str, str]) -> None:
    """Set tags on an MLflow run of this config's tracking store (e.g. a trial's final Optuna state)."""
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(base)
    with _allow_file_store(uri):
        client = MlflowClient(uri)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def counts(study: Any) -> tuple[int, int]:
    """(complete + pruned, running + waiting) trials of the study, read from its storage."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    running = sum(s in (TrialState.RUNNING, TrialState.WAITING) for s in states)
    return finished, running


def parent_run(study: Any, base: TrainConfig) -> str:
    """The study's MLflow parent run id (created once per study; later processes and re-runs reuse it)."""
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(base)
    with _allow_file_store(uri):
        client = MlflowClient(uri)
        existing = study.user_attrs.get(PARENT_ATTR)
        if existing:
            client.update_run(existing, status="RUNNING")
            return existing
        experiment_id = ensure_experiment(client, base.experiment, uri)
        run = client.create_run(experiment_id, run_name=f"tune-{study.study_name}",
                                tags={"optuna.study": study.study_name, "chestxray.kind": "tune"})
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        winner = study.user_attrs.get(PARENT_ATTR)
        if winner != run.info.run_id:  # another process created one at the same moment: use the stored one
            client.delete_run(run.info.run_id)
        return winner


def finish_parent(run_id: str, base: TrainConfig, metrics: dict[str, float], files: list[Path]) -> None:
    """Record the study's outcome on its parent run and close it."""
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(base)
    with _allow_file_store(uri):
        client = MlflowClient(uri)
        for key, value in metrics.items():
            if value == value:  # NaN (no complete trial) is left out
                client.log_metric(run_id, key, float(value))
        for path in files:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
