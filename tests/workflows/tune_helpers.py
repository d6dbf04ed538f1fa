"""Waiting for a tune condition instead of sleeping: a killed trial's heartbeat going stale."""

from __future__ import annotations

import time

import optuna


def wait_until_stale(url: str, study_name: str, number: int, heartbeat: int = 1, timeout: float = 60) -> None:
    """Return once the storage, read with a `heartbeat`-second heartbeat, counts trial `number` as stale."""
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    deadline = time.monotonic() + timeout
    while trial_id not in storage._get_stale_trial_ids(study_id):  # Optuna's own staleness rule, read-only
        assert time.monotonic() < deadline, f"trial {number} still not stale after {timeout} s"
        time.sleep(0.2)
