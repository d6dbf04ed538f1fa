"""Atomic file writes: write to a temporary name in the same folder, then rename, so no half file is ever seen."""

from __future__ import annotations

import base64
import contextlib
import errno
import glob
import json
import os
import re
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


def png_data_url(png: bytes | str | Path) -> str:
    """PNG bytes (or a PNG file) as a base64 data: URL, the form pages embed and the served MLflow model accepts."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


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


# CSV cells a spreadsheet would run as a formula (OWASP "CSV injection"): text starting with one of these. A file
# named '=HYPERLINK(...).png' landed unchanged in catalog.csv and predictions.csv, which people open in Excel.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = re.compile(r"^(?:[=+\-@\t\r]|')")  # a formula start, or the escape mark itself (so it reads back)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")  # -0.5 stays a number


def spreadsheet_safe(value: Any) -> Any:
    """OWASP's neutralisation of one CSV cell: text that starts like a formula gets a leading apostrophe, which
    spreadsheets show as text ('=1+1 shows =1+1); a number, negative or not, is left alone. Text that already
    starts with an apostrophe gets one more, so read_csv can undo the mark exactly."""
    if isinstance(value, str) and _ESCAPE.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def _text_columns(frame: pd.DataFrame) -> list[Any]:
    """Columns that may hold text: object or a string dtype (pandas 3 reads text as 'str')."""
    import pandas as pd

    return [c for c, dtype in frame.dtypes.items() if dtype == object or isinstance(dtype, pd.StringDtype)]


def spreadsheet_safe_frame(frame: pd.DataFrame, index: bool = False) -> pd.DataFrame:
    """A copy of `frame` whose text cells, column names (and index labels, when written) are spreadsheet_safe."""
    import pandas as pd

    out = frame.copy(deep=False)
    for column in _text_columns(frame):
        values = frame[column]
        text = values.astype("string")
        risky = text.str.contains(_ESCAPE, na=False) & ~text.str.contains(_NUMBER, na=False)
        if risky.any():
            risky[risky] = values[risky].map(lambda v: isinstance(v, str))  # text only, not odd objects
            out[column] = values.where(~risky, "'" + text[risky].astype(object))
    out.columns = [spreadsheet_safe(c) for c in frame.columns]
    if index and not pd.api.types.is_numeric_dtype(out.index.dtype):
        out.index = out.index.map(spreadsheet_safe)
    return out


def _unmark(value: Any) -> Any:
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV that write_csv wrote, undoing its spreadsheet mark (one leading apostrophe) in text cells, column
    names and an index read with index_col."""
    import pandas as pd

    frame = pd.read_csv(path, **kwargs)
    for column in _text_columns(frame):
        values = frame[column]
        marked = values.astype("string").str.startswith("'", na=False)
        if marked.any():
            frame[column] = values.where(~marked, values[marked].map(_unmark))
    frame.columns = [_unmark(c) for c in frame.columns]
    if not pd.api.types.is_numeric_dtype(frame.index.dtype):
        frame.index = frame.index.map(_unmark)
    return frame


def write_csv(path: str | Path, frame: pd.DataFrame, **kwargs: Any) -> Path:
    """Write a DataFrame as CSV (no index unless asked) atomically, its text cells spreadsheet_safe (read it back
    with read_csv); returns the path."""
    kwargs.setdefault("index", False)
    safe = spreadsheet_safe_frame(frame, index=bool(kwargs["index"]))
    with atomic_path(path) as tmp:
        safe.to_csv(tmp, **kwargs)
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
