"""A real PostgreSQL server (Debian's package) as the study storage: two worker processes, then a third continues.

The server is started here on loopback, on a free port, in a temporary data folder removed afterwards, as the
`postgres` user (PostgreSQL refuses to run as root). If it cannot start, the test fails with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[2]
SPACE_YAML = "params:\n  lr: {low: 1.0e-4, high: 5.0e-2, log: true}\npruner: {name: none}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """postgresql://postgres@127.0.0.1:PORT/optuna on a server this fixture starts and removes."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not bins:
        pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `make postgres` "
                    "or `apt-get install postgresql`")
    bin_dir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="chestxray-pg-", dir="/tmp"))  # outside pytest's root-only tmp folder
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    try:
        steps = [
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "optuna"],
        ]
        for step in steps:
            done = _as_postgres(*step)
            if done.returncode != 0:
                log = (root / "server.log").read_text(errors="replace")[-2000:] if (root / "server.log").exists() \
                    else ""
                pytest.fail(f"PostgreSQL did not start: {' '.join(step[:1])} exited {done.returncode}: "
                            f"{done.stderr.strip()[-2000:]} {log}")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _tune(prepared: Path, out: Path, url: str, trials: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "chestxray", "tune", str(prepared), "--space", str(out.parent / "space.yaml"),
               "--config", str(out.parent / "base.yaml"),
               "--model", "cnn-tiny", "--epochs", "1", "--trials", str(trials), "--out", str(out), "--no-mlflow",
               "--storage", url, "--study-name", "pg-study", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)


def test_postgres_study_two_workers_then_a_third(postgres_url: str, synthetic_prepared: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "study"
    (tmp_path / "space.yaml").write_text(SPACE_YAML, encoding="utf-8")
    (tmp_path / "base.yaml").write_text("precision: 32-true\nnum_workers: 0\nbatch_size: 64\n", encoding="utf-8")
    first = _tune(synthetic_prepared, out, postgres_url, 2, "--workers", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    third = _tune(synthetic_prepared, out, postgres_url, 3)  # a third process continues the same study
    assert third.returncode == 0, third.stderr[-3000:]
    assert not (out / "study.db").exists()  # the study lives in PostgreSQL only
    study = optuna.load_study(study_name="pg-study", storage=postgres_url)
    assert [t.number for t in study.trials] == [0, 1, 2]  # no trial beyond the count, none failed
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert "study pg-study: 3 complete" in third.stdout
    assert (out / "best.yaml").is_file() and (out / "tune_report.html").is_file()


def test_postgres_claim_under_a_forced_race(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The advisory-lock claim: four workers forced to race for three trials create exactly three."""
    from tests.workflows.test_tune_claim import TARGET, forced_race

    trials = forced_race(postgres_url, monkeypatch, study_name="pg-race")
    assert [t.number for t in trials] == list(range(TARGET))
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.fixture(scope="module")
def password_url(postgres_url: str) -> str:
    """postgresql://tune@…/tunepw, a database of role 'tune', which must give its password (SCRAM over TCP)."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE tune LOGIN PASSWORD 'pg-s3cret-7'")
        conn.execute("CREATE DATABASE tunepw OWNER tune")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        hba.write_text("host all tune 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    return postgres_url.replace("postgres@", "tune@").replace("/optuna", "/tunepw")


def _tune_env(prepared: Path, out: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`chestxray tune` with the environment `env` on top of this one's, less any PostgreSQL password variables."""
    base = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE", "CHESTXRAY_TUNE_STORAGE")}
    command = [sys.executable, "-m", "chestxray", "tune", str(prepared), "--space", str(out.parent / "space.yaml"),
               "--model", "cnn-tiny", "--epochs", "1", "--trials", "1", "--out", str(out), "--no-mlflow",
               "--study-name", "pw-study", *args]
    return subprocess.run(command, env={**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


def test_postgres_password_never_on_the_command_line(password_url: str, synthetic_prepared: Path,
                                                     tmp_path: Path) -> None:
    """The password reaches libpq from PGPASSWORD or ~/.pgpass, or the whole URL from $CHESTXRAY_TUNE_STORAGE; a
    password given in --storage works but is warned about (ps shows it); none at all is one clear line."""
    secret = "pg-s3cret-7"
    out, home = tmp_path / "study", tmp_path / "home"
    home.mkdir()
    (tmp_path / "space.yaml").write_text(SPACE_YAML, encoding="utf-8")
    with_secret = password_url.replace("tune@", f"tune:{secret}@")

    refused = _tune_env(synthetic_prepared, out, ["--storage", password_url], {"HOME": str(home)})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "cannot be reached" in refused.stderr and "~/.pgpass" in refused.stderr

    by_env = _tune_env(synthetic_prepared, out, ["--storage", password_url], {"HOME": str(home),
                                                                              "PGPASSWORD": secret})
    assert by_env.returncode == 0, by_env.stderr[-3000:]
    assert "study pw-study: 1 complete" in by_env.stdout

    host_port = password_url.split("@")[1].split("/")[0]
    (home / ".pgpass").write_text(f"{host_port}:tunepw:tune:{secret}\n")
    (home / ".pgpass").chmod(0o600)
    by_file = _tune_env(synthetic_prepared, out, ["--storage", password_url], {"HOME": str(home)})
    assert by_file.returncode == 0 and "1 complete" in by_file.stdout, by_file.stderr[-3000:]
    (home / ".pgpass").unlink()

    by_url_env = _tune_env(synthetic_prepared, out, [], {"HOME": str(home), "CHESTXRAY_TUNE_STORAGE": with_secret})
    assert by_url_env.returncode == 0 and "1 complete" in by_url_env.stdout, by_url_env.stderr[-3000:]
    assert "warning" not in by_url_env.stderr

    in_argv = _tune_env(synthetic_prepared, out, ["--storage", with_secret], {"HOME": str(home)})
    assert in_argv.returncode == 0 and "password in --storage is visible" in in_argv.stderr
    for done in (refused, by_env, by_file, by_url_env, in_argv):
        assert secret not in done.stdout + done.stderr  # never printed, even redacted URLs hide it
    assert not (out / "study.db").exists()
