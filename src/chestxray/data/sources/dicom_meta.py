"""Patient and acquisition attributes from DICOM headers, read at catalog time so that a subgroup audit can use them.

PatientSex, PatientAge, ViewPosition and Manufacturer become the catalog columns sex, age (years), view and
manufacturer. Only the header is read (pydicom, stop_before_pixels, the four tags), so this costs a few
milliseconds per file. A value the source table already gives wins; the header fills the gaps.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DICOM_TAGS: dict[str, str] = {"PatientSex": "sex", "PatientAge": "age", "ViewPosition": "view",
                              "Manufacturer": "manufacturer"}
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".dic")
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def dicom_age(value: object) -> float:
    """A DICOM Age String ('058Y', '006M', '003W', '010D'; a bare number is years) in years; NaN when unreadable."""
    match = _AGE.match(str(value)) if value is not None else None
    if not match:
        return float("nan")
    return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]


def is_dicom_path(path: str) -> bool:
    """True for a path with a DICOM suffix (.dcm, .dicom, .dic) or no suffix at all (DICOM files often have none)."""
    suffix = Path(path).suffix.lower()
    return bool(path) and (suffix in DICOM_SUFFIXES or suffix == "")


def read_dicom_attributes(path: str | Path) -> dict[str, object]:
    """sex, age (years), view and manufacturer from one file's header; a missing or unreadable tag is None/NaN.

    A file that is not DICOM gives all None (the catalog row is kept; decoding it is prepare's business)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out: dict[str, object] = {name: None for name in DICOM_TAGS.values()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns per odd value; the outcome is a value or None
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(DICOM_TAGS))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.debug("%s: no DICOM attributes (%s)", path, exc)
        return out
    for tag, name in DICOM_TAGS.items():
        value = ds.get(tag)
        text = str(value).strip() if value is not None else ""
        out[name] = text or None
    out["age"] = dicom_age(out["age"]) if out["age"] is not None else float("nan")
    return out


def dicom_attributes(paths: Sequence[str]) -> pd.DataFrame:
    """One row per path (same order): sex, age, view, manufacturer from the header of each DICOM path; rows of other
    files are empty. Logged: how many headers were read and how many gave each attribute."""
    frame = pd.DataFrame({name: pd.Series([None] * len(paths), dtype=object) for name in DICOM_TAGS.values()})
    frame["age"] = np.nan
    todo = [i for i, p in enumerate(paths) if is_dicom_path(str(p))]
    for i in todo:
        for name, value in read_dicom_attributes(paths[i]).items():
            frame.at[i, name] = value
    if todo:
        found = {name: int(frame[name].notna().sum()) for name in DICOM_TAGS.values()}
        log.info("read %d DICOM header(s): %s", len(todo), ", ".join(f"{k} in {v}" for k, v in found.items()))
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    return frame


def merge_dicom_attributes(meta: dict[str, pd.Series], paths: pd.Series) -> dict[str, pd.Series]:
    """Metadata columns with gaps filled from DICOM headers: a value the source gave wins, the header fills the rest;
    a column no row has stays absent. `paths` aligned with the metadata rows."""
    paths = paths.fillna("").astype(str).reset_index(drop=True)
    if not any(is_dicom_path(p) for p in paths):
        return meta
    found = dicom_attributes(list(paths))
    out = dict(meta)
    for name in DICOM_TAGS.values():
        header = found[name]
        if name in out:
            given = out[name].reset_index(drop=True)
            blank = given.isna() | (given.astype(str).str.strip() == "")
            out[name] = given.where(~blank, header)
        elif header.notna().any():
            out[name] = header
    return out
