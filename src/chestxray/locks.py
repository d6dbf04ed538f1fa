"""One writer per output folder, and no writer beside readers: a lock file holding the owner's pid and host, flock.

`folder_lock(folder, "prepare")` is held while a command writes into `folder`; a second process that tries the
same folder is refused at once with a message naming the owner (pid, host, command, start time). Readers of a
PREPARED folder (train, evaluate: `reading`) hold a shared lock on it, so prepare cannot rewrite shards under a
training (which then finished on padded images while its card said crop) nor a training start on a folder that is
being prepared; readers do not exclude each other. The kernel
releases a flock when its process dies, so the lock of a killed process (kill -9, power loss of a local run) is
stale: the next writer takes it over and logs whose it was. The lock file is not inherited by forked children
(decoder pools, loader workers), so a crashed owner never keeps it alive through its children.
"""

from __future__ import annotations

import contextlib
import errno
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


def make_folder(folder: Path) -> None:
    """Create an output folder (and its parents); a file in the way is a ConfigError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise ConfigError(f"{folder}: cannot be an output folder, {blocker} is a file; pick another folder (or move "
                          "the file away)") from None


def _readers(fd: int) -> str:
    """'pid 4242 (chestxray train …)' for the processes holding a shared lock on fd's file, from /proc/locks (Linux);
    'a chestxray train or evaluate' where that cannot be read."""
    try:
        inode = os.fstat(fd).st_ino
        pids = []
        with open("/proc/locks", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if "FLOCK" in fields and "READ" in fields and fields[-3].endswith(f":{inode}"):
                    pids.append(fields[-4])
        named = []
        for pid in dict.fromkeys(pids):
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            named.append(f"pid {pid} ({args[:120]})")
        if named:
            return ", ".join(named)
    except (OSError, IndexError, ValueError):
        pass
    return "a chestxray train or evaluate"


def _open_lock(path: Path, shared: bool) -> int | None:
    """An fd on the lock file (created if needed). A reader of a folder it may not write (a read-only dataset) opens
    an existing lock file read-only, or goes without a lock where there is none (nobody can prepare into it)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (PermissionError, OSError) as exc:
        if not shared or not isinstance(exc, PermissionError) and exc.errno not in (errno.EROFS, errno.EACCES):
            raise
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        log.debug("%s: cannot create a lock file (read-only folder); reading without a lock", path.parent)
        return None


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, shared: bool = False) -> Iterator[Path]:
    """Hold `folder`/.chestxray.lock while the block runs; raise ConfigError at once if another process holds it.

    shared=False (a writer: prepare, train into its run folder): exclusive; the owner is recorded in the file.
    shared=True (a reader: train and evaluate reading PREPARED): any number of readers at once, but never beside
    a writer, so prepare cannot rewrite shards that a training is reading (nor train read a folder being prepared).
    """
    folder = Path(folder)
    if not shared:
        make_folder(folder)
    path = folder / LOCK_FILE
    while True:
        fd = _open_lock(path, shared)
        if fd is None:
            yield path
            return
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(folder, fd, shared) from None
        try:  # the file we locked may have been removed by its previous owner meanwhile: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if shared:
        _held[fd] = path
        try:
            yield path
        finally:  # a reader never removes the file: another reader may hold the same one
            _held.pop(fd, None)
            os.close(fd)
        return
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


def _in_use(folder: Path, fd: int, shared: bool) -> ConfigError:
    """The refusal naming who holds the lock: a writer (from the file) or, for a writer refused, the readers."""
    try:
        if not shared and _only_readers(folder):
            return ConfigError(f"{folder}: being read by {_readers(fd)}; wait for it to finish or stop it, or write "
                               "into another folder")
        owner = _owner(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    finally:
        os.close(fd)
    what = "then run this again" if shared else "or pick another output folder"
    return ConfigError(f"{folder}: in use by {owner}; wait for it to finish or stop it, {what}")


def _only_readers(folder: Path) -> bool:
    """True when the lock is held by readers only (a shared lock can be taken beside them)."""
    try:
        probe = os.open(folder / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(probe)


@contextlib.contextmanager
def reading(prepared: str | Path, command: str) -> Iterator[None]:
    """Hold a shared lock on a local PREPARED folder while a command reads it (nothing for a URL)."""
    text = str(prepared)
    if "://" in text or text.startswith("pipe:") or not Path(text).is_dir():
        yield
        return
    with folder_lock(text, command, shared=True):
        yield
