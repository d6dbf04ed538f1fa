"""The claim on a study's next trial: one process at a time counts the study's trials and creates the next one.

Without it two processes that both see "3 of 4 trials" create a fifth trial, which has to be thrown away. The claim
is a lock every process sharing the storage can take: an flock on a file beside a SQLite database (processes on one
machine, the only way SQLite is shared safely), a session-level advisory lock on PostgreSQL (pg_advisory_lock) or
MySQL (GET_LOCK). The operating system or the database server drops the lock when its holder dies, so a killed
worker never blocks the others. The lock is held for milliseconds: from before the count until the new trial
exists (Optuna's ask, including the sampler's draw), never while a trial trains.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chestxray.errors import ConfigError

DIALECTS = ("sqlite", "postgresql", "mysql")


def _dialect(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()


def check_claimable(url: str) -> None:
    """Refuse a storage whose database offers no lock the claim can use (before any trial starts)."""
    dialect = _dialect(url)
    if dialect not in DIALECTS:
        raise ConfigError(f"--storage {dialect}://…: chestxray tune shares a study through SQLite, PostgreSQL or "
                          f"MySQL (they can lock the claim on the next trial); use one of those")


def _key(study_name: str) -> int:
    """A signed 64-bit advisory-lock key for the study (the same in every process)."""
    digest = hashlib.sha256(f"chestxray-tune:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[Callable[[], None]]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    try:
        yield release
    finally:
        release()


@contextlib.contextmanager
def _database_lock(url: str, dialect: str, study_name: str) -> Iterator[Callable[[], None]]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    conn = engine.connect()
    if dialect == "postgresql":
        take, drop, args = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", {"k": _key(study_name)}
    else:
        take, drop, args = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", {"k": f"chestxray-tune:{study_name}"}
    conn.execute(sqlalchemy.text(take), args)
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            try:
                conn.execute(sqlalchemy.text(drop), args)
            finally:
                conn.close()
                engine.dispose()

    try:
        yield release
    finally:
        release()


@contextlib.contextmanager
def claim(url: str, study_name: str) -> Iterator[Callable[[], None]]:
    """Hold the study's claim lock; yields `release`, which may be called early (it is idempotent)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):  # a private in-memory study: nobody else can see it
            yield lambda: None
            return
        with _file_lock(Path(f"{database}.claim.lock")) as release:
            yield release
    elif dialect in ("postgresql", "mysql"):
        with _database_lock(url, dialect, study_name) as release:
            yield release
    else:
        check_claimable(url)


def run_claimed_trial(study: Any, target: int, url: str, objective: Callable[[Any], float],
                      catch: tuple[type[Exception], ...] = (), prepare: Callable[[Any, int], None] | None = None
                      ) -> bool:
    """Create and run one trial if the study holds fewer than `target` live ones; False when none was needed.

    Live means complete, pruned, running or waiting; a waiting trial (a retry of a killed one) is run before any new
    one. Counting and creating happen under the claim, so however many processes call this at once, the study never
    holds more than `target` live trials. `prepare(study, position)`, called under the claim just before the trial
    is created, gets the trial's position among the live trials (e.g. to seed the sampler by it).
    """
    from optuna.trial import TrialState

    from chestxray.workflows.tune_storage import counts, fail_stale

    with claim(url, study.study_name) as release:
        fail_stale(study)
        finished, running = counts(study)
        waiting = sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if finished + running >= target and not waiting:
            return False
        if prepare is not None:
            prepare(study, finished + running - waiting)

        def claimed(trial: Any) -> float:
            release()  # the trial exists now: let the next process count
            return objective(trial)

        study.optimize(claimed, n_trials=1, catch=catch)
    return True
