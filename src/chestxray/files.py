"""Atomic file writes: write to a temporary name in the same folder, then rename, so no half file is ever seen."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

KILL_ENV = "CHESTXRAY_TEST_KILL_AT"  # test-only: see kill_point
_kill_hits: dict[str, int] = {}


def kill_point(point: str) -> None:
    """Test-only: SIGKILL this process the N-th time it reaches `point` when $CHESTXRAY_TEST_KILL_AT is 'point:N'
    (or 'point', N = 1). Atomic writes pass 'replace:<file name>' just before the rename and 'swap:<folder name>'
    between moving an old folder aside and renaming the new one in; unset in real use, where it costs one lookup."""
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    name, _, count = want.rpartition(":")
    if not count.isdigit():
        name, count = want, "1"
    if name == point:
        _kill_hits[point] = _kill_hits.get(point, 0) + 1
        if _kill_hits[point] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException | None) -> OSError | BaseException | None:
    """The error in `exc`'s chain (cause and context) that says a disk or quota is full, else None: an OSError
    ENOSPC / EDQUOT, or a database driver's 'database or disk is full' (MLflow's SQLite store)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if "database or disk is full" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def free_space(folder: str | Path) -> str:
    """'12.3 MB free' on the file system holding `folder` (or its nearest existing parent); '' if unknown."""
    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 1e6:,.1f} MB free"
    except OSError:
        return ""


def disk_full_message(folder: str | Path, exc: BaseException, kept: str) -> str:
    """One line: which folder's disk is full, the file being written (when known), what was kept, what to do."""
    full = disk_full(exc)
    name = getattr(full, "filename", None)
    writing = f" while writing {name}" if name else ""
    space = free_space(folder)
    return (f"{folder}: no space left on the device{writing}{f' ({space})' if space else ''}; {kept}")


def _new_temp(path: Path) -> Path:
    """Create an empty, unused temporary file beside `path` with the usual permissions (0o666 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        yield tmp
        kill_point(f"replace:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a write() failing says no file: name the one meant
            exc.filename = str(path)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` only when the block completes."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically; returns the path."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write indented JSON (non-JSON values as str) atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame, **kwargs: Any) -> Path:
    """Write a DataFrame as CSV (no index unless asked) atomically; returns the path."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Delete what interrupted atomic writes of `path` left beside it (.<name>.*.tmp files or folders, .<name>.*.old
    folders); call it only while holding the folder's lock (chestxray.locks), as another writer's temporaries
    look the same. Returns what was removed."""
    path = Path(path)
    pattern = f".{glob.escape(path.name)}.*."
    found = [*path.parent.glob(pattern + "tmp"), *path.parent.glob(pattern + "old")]
    for item in found:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder beside `path` to fill; on success it replaces `path` whole (the old folder is
    moved aside, the new one renamed in, the old one deleted), on error it is deleted. So `path` is always a
    complete folder or absent, never a mix; leftovers of an interrupted earlier write are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    token = secrets.token_hex(4)
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.{token}.old")
    if path.exists():
        os.rename(path, old)
        kill_point(f"swap:{path.name}")
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
