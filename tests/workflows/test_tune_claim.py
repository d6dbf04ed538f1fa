"""The claim on a study's next trial under a forced race: every worker reads the trial counts, then waits until all
workers have read them before creating a trial. Without the claim that race creates one trial per worker; with it the
study holds exactly the requested count, none failed."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from chestxray.errors import ConfigError
from chestxray.workflows import tune_claim, tune_storage
from chestxray.workflows.tune_claim import check_claimable, run_claimed_trial
from chestxray.workflows.tune_storage import open_storage

WORKERS, TARGET = 4, 3


def forced_race(url: str, monkeypatch: pytest.MonkeyPatch, study_name: str = "race") -> list[optuna.trial.FrozenTrial]:
    """Run WORKERS threads that each keep claiming trials until TARGET are finished; return the study's trials."""
    optuna.create_study(storage=open_storage(url, heartbeat=1), study_name=study_name)
    barrier = threading.Barrier(WORKERS)
    real_counts = tune_storage.counts

    def counts_then_wait(study):  # the count a claim reads, then a wait until every worker has read one
        seen = real_counts(study)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        return seen

    monkeypatch.setattr(tune_storage, "counts", counts_then_wait)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            study = optuna.load_study(study_name=study_name, storage=open_storage(url, heartbeat=1))
            while real_counts(study)[0] < TARGET:
                if not run_claimed_trial(study, TARGET, url, lambda trial: trial.suggest_float("x", 0, 1)):
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return optuna.load_study(study_name=study_name, storage=url).trials


def test_claimed_race_creates_exactly_the_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = forced_race(f"sqlite:///{tmp_path / 'study.db'}", monkeypatch)
    assert [t.number for t in trials] == list(range(TARGET))
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_the_race_is_real_without_the_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same forced race with the lock taken out: every worker creates a trial (the test above could fail)."""

    @contextlib.contextmanager
    def no_lock(url: str, study_name: str):
        yield lambda: None

    monkeypatch.setattr(tune_claim, "claim", no_lock)
    trials = forced_race(f"sqlite:///{tmp_path / 'study.db'}", monkeypatch)
    assert len(trials) == WORKERS > TARGET


def test_a_killed_holder_does_not_block_the_claim(tmp_path: Path) -> None:
    """The SQLite claim is an flock: a process that dies holding it releases it (the kernel drops the lock)."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'study.db'}"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom chestxray.workflows.tune_claim import claim\n"
        f"with claim({url!r}, 's'):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait(timeout=30)
        taken = threading.Event()

        def take() -> None:
            with tune_claim.claim(url, "s"):
                taken.set()

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        assert taken.wait(timeout=30)
    finally:
        holder.kill()


def test_a_storage_without_a_lock_is_refused() -> None:
    with pytest.raises(ConfigError, match="SQLite, PostgreSQL or MySQL"):
        check_claimable("oracle://user@host/db")
    check_claimable("sqlite:////tmp/x.db")
    check_claimable("postgresql://u@h/db")
