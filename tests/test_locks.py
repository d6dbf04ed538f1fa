"""folder_lock: one writer per folder, the owner named in the refusal, stale locks of dead processes taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from chestxray.errors import ConfigError
from chestxray.locks import LOCK_FILE, folder_lock


def test_second_holder_is_refused_naming_the_first(tmp_path):
    with folder_lock(tmp_path, "train") as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["command"] == "train"
        with pytest.raises(ConfigError, match=rf"{tmp_path}: in use by pid {os.getpid()} on host \S+ \(chestxray "
                                              r"train, since .*\); wait for it to finish or stop it"):
            with folder_lock(tmp_path, "prepare"):
                pass
    assert not (tmp_path / LOCK_FILE).exists()
    with folder_lock(tmp_path, "prepare"):  # free again once released
        pass


def test_lock_of_a_killed_process_is_taken_over_and_children_do_not_keep_it(tmp_path, caplog):
    """A process takes the lock, forks a long-lived child, and is killed with SIGKILL: the lock is free at once."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from chestxray.locks import folder_lock
        with folder_lock({str(tmp_path)!r}, "prepare"):
            child = os.fork()
            if child == 0:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1); os.dup2(null, 2)  # let the test's pipes close
                time.sleep(30); os._exit(0)
            print(child, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout)
    stale = json.loads((tmp_path / LOCK_FILE).read_text())
    try:
        with caplog.at_level(logging.WARNING, logger="chestxray.locks"):
            with folder_lock(tmp_path, "prepare"):
                assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert f"taking over the stale lock of pid {stale['pid']}" in caplog.text
        os.kill(child, 0)  # the child was still alive while the lock was taken over
    finally:
        os.kill(child, signal.SIGKILL)


def test_readers_share_and_exclude_a_writer_naming_each_other(tmp_path):
    """Issue 22: prepare into a folder a training was reading went ahead (the training then finished on padded
    images while its card said crop). Readers (train, evaluate) hold a shared lock; prepare an exclusive one."""
    with folder_lock(tmp_path, "train", shared=True), folder_lock(tmp_path, "evaluate", shared=True):
        with pytest.raises(ConfigError, match=rf"{tmp_path}: being read by pid {os.getpid()} \(.*\); wait for it to "
                                              r"finish or stop it, or write into another folder"):
            with folder_lock(tmp_path, "prepare"):
                pass
    with folder_lock(tmp_path, "prepare"):
        with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} on host \S+ \(chestxray prepare, "
                                              r"since .*\); wait for it to finish or stop it, then run this again"):
            with folder_lock(tmp_path, "train", shared=True):
                pass
    with folder_lock(tmp_path, "prepare"):  # every lock released
        pass


def test_a_reader_of_a_read_only_folder_goes_on_without_a_lock(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):  # root ignores chmod, so a read-only mount is simulated
        if str(path).endswith(LOCK_FILE) and flags & os.O_CREAT:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with folder_lock(tmp_path, "train", shared=True):
        assert not (tmp_path / LOCK_FILE).exists()


def test_prepare_and_train_refuse_each_other_on_one_prepared_folder(tmp_path):
    from typer.testing import CliRunner

    from chestxray.cli import app
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits
    from tests.data import probes

    catalog = assign_splits(read_folder(probes.class_folders(tmp_path / "src", {"NORMAL": 8, "PNEUMONIA": 8})),
                            ratios=(0.5, 0.25, 0.25))
    prepared = tmp_path / "prepared"
    prepare_dataset(catalog, prepared, size=16, workers=0)
    with folder_lock(prepared, "prepare"):  # a prepare is writing: training does not start
        out = CliRunner().invoke(app, ["train", str(prepared), "--model", "cnn-tiny", "--epochs", "1", "--out",
                                       str(tmp_path / "run"), "--no-progress", "--no-mlflow"], terminal_width=400)
        probes.one_line_error(out, r"prepared: in use by pid \d+ .*chestxray prepare.*then run this again")
    with folder_lock(prepared, "train", shared=True):  # a training is reading: prepare does not rewrite
        with pytest.raises(ConfigError, match=r"prepared: being read by pid \d+"):
            prepare_dataset(catalog, prepared, size=16, resize="pad", workers=0)
