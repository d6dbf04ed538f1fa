"""One writer per output folder: a lock file holding the owner's pid and host, taken with flock.

`folder_lock(folder, "prepare")` is held while a command writes into `folder`; a second process that tries the
same folder is refused at once with a message naming the owner (pid, host, command, start time). The kernel
releases a flock when its process dies, so the lock of a killed process (kill -9, power loss of a local run) is
stale: the next writer takes it over and logs whose it was. The lock file is not inherited by forked children
(decoder pools, loader workers), so a crashed owner never keeps it alive through its children.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from chestxray.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".chestxray.lock"
_held: dict[int, Path] = {}  # fds of locks this process holds (closed in forked children)


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _owner(text: str) -> str:
    """'pid N on host H (chestxray prepare, since T)' from a lock file's JSON, or a note that it is unreadable."""
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on host {info['host']} (chestxray {info['command']}, since "
                f"{info['started']})")
    except (ValueError, KeyError, TypeError):
        return "another process (its lock file is unreadable)"


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold `folder`/.chestxray.lock while the block runs; raise ConfigError at once if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise ConfigError(f"{folder}: in use by {owner}; wait for it to finish or stop it, or pick another "
                              "output folder") from None
        try:  # the file we locked may have been removed by its previous owner meanwhile: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if previous:
        log.warning("%s: taking over the stale lock of %s, which is no longer running", folder, _owner(previous))
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    _held[fd] = path
    try:
        yield path
    finally:
        _held.pop(fd, None)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
