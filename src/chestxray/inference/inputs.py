"""What `predict` reads: image files, folders (recursively), glob patterns and CSV/TXT lists of paths → one path list.

Nothing here decodes pixels or imports torch. Inputs that name nothing usable (a pattern that matches no file, a
folder without images, a list whose rows are empty) become problems reported with the input, never a traceback.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chestxray.data.imaging import check_readable
from chestxray.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")
LIST_SUFFIXES: tuple[str, ...] = (".csv", ".txt")
PATH_COLUMNS: tuple[str, ...] = ("path", "image_path", "file", "filename", "image", "Image Index")
_GLOB_CHARS = set("*?[")


@dataclass
class Inputs:
    """Expanded inputs: image paths in the order given, and (input, reason) for inputs that named no image."""

    paths: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def is_image_name(path: Path) -> bool:
    """A file a folder scan picks up: a known image suffix, or no suffix at all (DICOM files often have none)."""
    return not path.name.startswith(".") and (path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == "")


def _scan_folder(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, sorted by path (hidden files and folders skipped)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / name for name in sorted(files) if is_image_name(Path(name)))
    return found


def _read_list(path: Path) -> list[Path]:
    """Paths listed in a TXT file (one a line, '#' comments) or a CSV (a 'path'-like column, else the first one).

    Relative paths are taken from the list's own folder when the file is there, else from the working folder.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the list of input files ({exc}); give a UTF-8 CSV or TXT file") from None
    if path.suffix.lower() == ".txt":
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if not rows:
            return []
        header = [c.strip() for c in rows[0]]
        column = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
        if column is None and not Path(header[0]).suffix:
            raise DataError(f"{path}: no path column (found {header}); name one of {list(PATH_COLUMNS)} "
                            "or put the paths in the first column")
        body = rows[1:] if column is not None else rows
        entries = [r[column or 0].strip() for r in body if len(r) > (column or 0) and r[column or 0].strip()]
    return [_resolve(Path(e), path.parent) for e in entries]


def _resolve(entry: Path, base: Path) -> Path:
    if entry.is_absolute() or not (base / entry).exists():
        return entry
    return base / entry


def _expand_one(arg: str, out: Inputs) -> None:
    path = Path(arg).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is None and _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            out.problems.append((arg, f"{arg}: the pattern matched no input file; check the folder and the pattern"))
        for match in matches:
            _expand_one(match, out) if Path(match).is_dir() else out.paths.append(Path(match))
    elif mode is not None and stat.S_ISDIR(mode):
        found = _scan_folder(path)
        if not found:
            out.problems.append((arg, f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)} or no "
                                      "suffix); check the folder"))
        out.paths.extend(found)
    elif mode is not None and path.suffix.lower() in LIST_SUFFIXES:
        listed = _read_list(path)
        if not listed:
            out.problems.append((arg, f"{path}: the list of input files is empty"))
        out.paths.extend(listed)
    else:
        out.paths.append(path)  # a missing file is reported by check_input_file with the others


def expand_inputs(args: Iterable[str | Path]) -> Inputs:
    """Files as given, folders recursively, glob patterns (also quoted ones, '**' included) and CSV/TXT path lists."""
    out = Inputs()
    for arg in args:
        _expand_one(str(arg), out)
    log.info("%d input file(s) from %d argument(s)", len(out.paths), len(out.paths) + len(out.problems))
    return out


def check_input_file(path: Path) -> None:
    """Raise DataError for a missing, folder, empty or unreadable input file, in words for loose files (no catalog)."""
    check_readable(path, noun="input file", fix_missing="check the path",
                   fix_folder="pass the folder itself to predict it recursively")
