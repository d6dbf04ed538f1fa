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
