"""Shared reading helpers for every source (robust CSV reading, vectorised findings parsing, one-pass image
indexing, catalog writing with a missing-images report) and the generic CSV reader `read_csv_table`."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog, save_catalog
from chestxray.data.labels import NIH14, canonical_label, closest
from chestxray.data.identity import (
    case_merges,
    normalize_patient_ids,
    refuse_case_twins,
    refuse_same_files,
    report_case_merges,
    resolve_paths,
)
from chestxray.data.tasks import apply_merges, check_one_hot, classes_from_findings, class_order, is_multiclass, one_hot
from chestxray.errors import ConfigError, DataError, clip, clipped, printable, quote
from chestxray.files import write_csv

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm")
NORMAL_NAMES: frozenset[str] = frozenset({"no finding", "normal", "no_finding", "none"})
MISSING_CSV = "missing_images.csv"
MAX_LABEL_NAME = 100  # characters of a finding or class name; longer is a wrong column or separator
MISSING_PATIENT = ("error", "own", "drop")  # what to do with rows whose patient id is empty
_SEPARATORS = (",", ";", "\t", "|")
# Metadata a CSV source keeps when it has these columns (any capitalisation): who the patient is and how/where the
# image was taken, for subgroup audits (chestxray audit); --keep-cols adds any other column.
META_COLUMNS: tuple[str, ...] = ("age", "sex", "view", "location", "site", "source", "manufacturer", "race",
                                 "ethnicity")


def read_table(path: str | Path, keep: set[str] | None = None, text: set[str] | None = None) -> pd.DataFrame:
    """Read a CSV (plain or .gz) into a DataFrame, turning every way it can fail into a DataError naming the file.

    keep: when every name in it is a column, only those columns are parsed (faster); otherwise all are read.
    text: columns read as text, never as numbers (ids keep their form: '007' stays '007', no '2.0' floats).
    The separator is the comma unless the header line has none and holds ';', a tab or '|' (then that is used)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV file")
    try:
        sep = _separator(path)
        _refuse_repeated_columns(pd.read_csv(path, encoding="utf-8", nrows=1, sep=sep, header=None, dtype=str),
                                 path)
        header = pd.read_csv(path, encoding="utf-8", nrows=0, sep=sep).columns
        names = {str(c).strip(): c for c in header}
        usecols = [c for c in header if str(c).strip() in keep] if keep and keep <= set(names) else None
        dtype = {names[c]: str for c in (text or set()) if c in names}
        frame = pd.read_csv(path, encoding="utf-8", low_memory=False, usecols=usecols, sep=sep, dtype=dtype or None)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save the file as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty; expected a CSV with a header row") from exc
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise DataError(f"{path}: the table has a header but no rows")
    return frame


def _refuse_repeated_columns(first_row: pd.DataFrame, path: Path) -> None:
    """Refuse a header that names one column twice (pandas would rename the second 'X.1' and the reader use the
    first silently)."""
    names = [str(c).strip() for c in first_row.iloc[0].tolist()] if len(first_row) else []
    repeated = sorted({n for n in names if names.count(n) > 1 and n != "nan"})
    if repeated:
        where = {n: [i + 1 for i, m in enumerate(names) if m == n] for n in repeated[:3]}
        shown = ", ".join(f"{quote(n, 60)} (columns {cols})" for n, cols in where.items())
        raise DataError(f"{path}: the header names the same column more than once: {shown}; rename or remove the "
                        "extra column so each name is one column")


def _separator(path: Path) -> str:
    """',' unless the header line has no comma but another usual separator (logged, so the reader knows)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        line = fh.readline()
    if "," in line:
        return ","
    counts = {sep: line.count(sep) for sep in _SEPARATORS[1:]}
    sep = max(counts, key=counts.__getitem__)
    if counts[sep]:
        log.info("%s: the header has no comma; reading it as %r-separated", path, sep)
        return sep
    return ","


def patient_column(values: pd.Series, ids: pd.Series, where: str, column: str, missing: str = "error"
                   ) -> tuple[pd.Series, np.ndarray, dict]:
    """Patient ids as text, and the mask of rows to keep. An empty id is an error naming its rows (a silent
    patient of its own would risk leaking one person across splits) unless `missing` says what to do:
    'own' makes each such image its own patient ('missing:<image id>'), 'drop' leaves those rows out."""
    if missing not in MISSING_PATIENT:
        raise ConfigError(f"--missing-patient {missing!r}: expected one of {MISSING_PATIENT}")
    text = values.astype("string").str.strip()
    empty = (text.isna() | (text == "")).to_numpy()
    keep = np.ones(len(values), dtype=bool)
    report = {"policy": missing, "rows": int(empty.sum())}
    if empty.any():
        rows = [int(i) + 2 for i in values.index[empty][:10]]
        if missing == "error":
            raise DataError(f"{where}: column {column!r} is empty in {int(empty.sum())} row(s) (file rows {rows}); "
                            "fill in the patient ids, or pass --missing-patient own (each such image its own patient) "
                            "or --missing-patient drop (leave those rows out)")
        log.warning("%s: %d row(s) without a patient id (file rows %s): %s", where, int(empty.sum()), rows,
                    "each is its own patient" if missing == "own" else "left out")
        if missing == "own":
            text = text.where(~empty, "missing:" + ids.astype(str))
        else:
            keep = ~empty
    return text.astype(str), keep, report


def require_columns(frame: pd.DataFrame, columns: list[str], where: str, hint: str = "") -> None:
    """Raise a DataError naming each required column the table lacks and the columns it has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = ", ".join(quote(c, 60) + closest(clip(c, 60), clipped(frame.columns, 200)) for c in missing)
        raise DataError(f"{where}: no column {names} (found: {clipped(frame.columns, 30)}){'; ' + hint if hint else ''}")


def check_unique(ids: pd.Series, where: str, column: str) -> None:
    """Raise a DataError when an image id occurs more than once (each image must be one row)."""
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        rows = [int(i) + 2 for i in dup.index[:5]]
        raise DataError(f"{where}: column {column!r} has {dup.nunique()} duplicate value(s), e.g. "
                        f"{clipped(dup.unique())} (file rows {rows}); each image must appear once")


def parse_findings(values: pd.Series, where: str, column: str, sep: str = "|",
                   labels: tuple[str, ...] | None = None, info: dict | None = None
                   ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Turn separated finding names into an (n, L) uint8 matrix, vectorised over the distinct strings.

    Each character of `sep` separates findings; 'No Finding'/'normal' gives an all-zero row. Names that differ only
    by letter case are one finding (spelled as `labels` or NIH14 spell it, else as most rows do; recorded in
    info['label_case_merged']). With `labels` given, a name outside it is a DataError naming it; without, the schema
    is the distinct names found (in NIH14 order when all are NIH findings, else sorted).
    """
    codes, uniques = pd.factorize(values, sort=False)
    uniques = [str(u) for u in uniques]
    blank = [i for i, u in enumerate(uniques) if not u.strip()]
    if (codes < 0).any() or blank:
        bad = (codes < 0) | np.isin(codes, blank)
        rows = [int(i) + 2 for i in values.index[bad][:5]]
        raise DataError(f"{where}: column {column!r} is empty in file row(s) {rows}; write 'No Finding' for normal images")
    splitter = re.compile("[" + re.escape(sep) + "]")
    parsed = [[canonical_label(n) for n in splitter.split(u) if n.strip()] for u in uniques]
    parsed = [[n for n in names if n.lower() not in NORMAL_NAMES] for names in parsed]
    rows_per_unique = np.bincount(codes, minlength=len(uniques))
    counts = Counter()
    for names, rows in zip(parsed, rows_per_unique):
        counts.update(dict.fromkeys(names, int(rows)))
    mapping = case_merges(counts, labels if labels is not None else NIH14)
    if mapping:
        parsed = [list(dict.fromkeys(mapping.get(n, n) for n in names)) for names in parsed]
    merged = report_case_merges(mapping, counts, f"{where}: column {column!r}")
    if info is not None:
        info["label_case_merged"] = merged
    found = sorted({n for names in parsed for n in names})
    long = [n for n in found if len(n) > MAX_LABEL_NAME]
    if long:
        raise DataError(f"{where}: column {column!r} holds a finding name of {len(long[0]):,} characters "
                        f"({quote(long[0], 60)}); names are at most {MAX_LABEL_NAME} characters: check --sep and the "
                        "column")
    if labels is None:
        labels = tuple(n for n in NIH14 if n in found) if set(found) <= set(NIH14) else tuple(found)
    unknown = [n for n in found if n not in labels]
    if unknown:
        counts = {n: int(sum((codes == i).sum() for i, names in enumerate(parsed) if n in names)) for n in unknown[:10]}
        named = ", ".join(f"{quote(n, 60)}{closest(clip(n, 60), labels)} ({counts[n]} rows)" for n in unknown[:10])
        raise DataError(f"{where}: column {column!r} has unknown finding name(s) {named}; "
                        f"known names: {list(labels)} (or 'No Finding' for normal)")
    position = {name: j for j, name in enumerate(labels)}
    table = np.zeros((len(uniques), len(labels)), dtype=np.uint8)
    for i, names in enumerate(parsed):
        table[i, [position[n] for n in names]] = 1
    return table[codes], tuple(labels)


def index_images(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> dict[str, str]:
    """Map file name -> absolute path for every image under root, nested or flat, in one os.walk pass."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such image folder; check --images")
    found: dict[str, str] = {}
    duplicates = 0
    unreadable: list[str] = []

    def report(exc: OSError) -> None:
        unreadable.append(f"{printable(str(exc.filename))} ({exc.strerror or exc})")

    for folder, dirs, files in os.walk(root, onerror=report):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(extensions) and not name.startswith("."):
                if name in found:
                    duplicates += 1
                    continue
                found[name] = os.path.abspath(os.path.join(folder, name))
    if duplicates:
        log.warning("%s: %d image file name(s) occur in more than one folder; the first found is used", root, duplicates)
    if unreadable:
        log.warning("%s: %d folder(s) cannot be read and are skipped (their images count as missing), e.g. %s",
                    root, len(unreadable), "; ".join(unreadable[:3]))
    return found


def attach_paths(table: pd.DataFrame, paths: pd.Series, where: str, hint: str = "check the image folder"
                 ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Set table['path'] (NaN = no image file) and drop the rows without an image, logging how many; `hint` is the
    advice when no row has one (what the calling source can do about it).

    Returns the kept rows, the boolean mask of kept rows (to filter aligned arrays) and the missing image ids."""
    keep = paths.notna().to_numpy()
    ids: list[str] = []
    table = table.assign(path=np.where(keep, paths.astype(object).to_numpy(), "").astype(str))
    if not keep.all():
        ids = table.loc[~keep, "image_id"].astype(str).tolist()
        if not keep.any():
            raise DataError(f"{where}: none of the {len(ids)} rows has an image file (e.g. {clipped(ids, 3)}); {hint}")
        log.warning("%s: %d of %d rows have no image file, e.g. %s; they are left out (listed in %s)",
                    where, len(ids), len(table), clipped(ids), MISSING_CSV)
        table = table.loc[keep].reset_index(drop=True)
    return table, keep, ids


def make_catalog(table: pd.DataFrame, matrix: np.ndarray, labels: tuple[str, ...], task: str, source: str,
                 info: dict, meta: dict[str, pd.Series], missing: list[str] | None = None) -> Catalog:
    """Assemble the catalog table in contract column order; missing images go into info['missing_images'].

    DICOM rows get sex, age, view and manufacturer from their headers where the source gave none
    (chestxray.data.sources.dicom_meta)."""
    from chestxray.data.sources.dicom_meta import merge_dicom_attributes

    if "path" in table:
        meta = merge_dicom_attributes(meta, table["path"])
    out = pd.DataFrame({name: table[name].reset_index(drop=True) if name in table else pd.Series([""] * len(table))
                        for name in ("image_id", "path", "patient_id", "split")})
    for name in out.columns:
        if not pd.api.types.is_string_dtype(out[name]) or out[name].isna().any():
            out[name] = out[name].fillna("").astype(str)
    info = dict(info)
    out["patient_id"], info["patient_ids"] = normalize_patient_ids(out["patient_id"])
    missing_labels = np.issubdtype(matrix.dtype, np.floating) and bool(np.isnan(matrix).any())
    labels_frame = pd.DataFrame(matrix if missing_labels else matrix.astype(np.uint8), columns=list(labels))
    extra = pd.DataFrame({k: v.to_numpy() for k, v in meta.items()})
    out = pd.concat([out, labels_frame, extra], axis=1)
    info["missing_images"] = list(missing or [])
    return Catalog(table=out, labels=labels, task=task, source=source, info=info)


def write_catalog(catalog: Catalog, out_dir: str | Path) -> Path:
    """Save the catalog; rows left out for a missing image go to out_dir/missing_images.csv (count kept in info)."""
    out = Path(out_dir)
    missing = list(catalog.info.get("missing_images") or [])
    info = dict(catalog.info)
    info["missing_images"] = {"count": len(missing), "first": missing[:10], "file": MISSING_CSV if missing else None}
    if missing:
        write_csv(out / MISSING_CSV, pd.DataFrame({"image_id": missing}))
    elif (out / MISSING_CSV).exists():
        (out / MISSING_CSV).unlink()
    return save_catalog(replace(catalog, info=info), out)


def to_age(values: pd.Series) -> pd.Series:
    """Age in years as numbers; NIH 2017 spellings like '058Y' are accepted, anything else becomes NaN."""
    if pd.api.types.is_numeric_dtype(values):
        return values
    return pd.to_numeric(values.astype(str).str.strip().str.rstrip("Yy"), errors="coerce")


def _metadata(frame: pd.DataFrame, keep_cols: Sequence[str] = (), where: str = "") -> dict[str, pd.Series]:
    """Pick the META_COLUMNS (any capitalisation, age as a number) and the `keep_cols` named by the user (verbatim
    names; a missing one is a DataError naming the columns there are)."""
    lower = {c.lower(): c for c in frame.columns}
    meta = {name: frame[lower[name]] for name in META_COLUMNS if name in lower}
    require_columns(frame, list(keep_cols), where, "--keep-cols names columns of the table")
    taken = {"image_id", "path", "patient_id", "split"}
    clash = [c for c in keep_cols if c in taken]
    if clash:
        raise DataError(f"{where}: --keep-cols {clash} would replace a catalog column ({sorted(taken)}); leave them out")
    meta.update({c: frame[c] for c in keep_cols if c.lower() not in meta})
    if "age" in meta:
        meta["age"] = to_age(meta["age"])
    return meta


def read_csv_table(table: str | Path, path_col: str, patient_col: str, *, label_cols: list[str] | None = None,
                   findings_col: str | None = None, sep: str = "|", images_root: str | Path | None = None,
                   labels: tuple[str, ...] | None = None, check_images: bool = True, task: str = "auto",
                   merges: dict[str, str] | None = None, views: list[str] | None = None,
                   missing_patient: str = "error", keep_cols: Sequence[str] = ()) -> Catalog:
    """Catalog any collection described by a CSV: one row an image, labels as 0/1 columns or a findings column.

    Image paths are relative to `images_root` (default: the CSV's folder) unless absolute. Rows whose image
    file does not exist are left out and listed in info['missing_images']. merges maps finding names onto merged
    names (old -> new); views keeps rows whose view column is one of them. task 'multiclass' makes each row's one
    finding (after merging; 'No Finding' is a class too) its class; rows with none or several are left out.
    Path and patient columns are read as text; an empty patient id follows `missing_patient` (patient_column).
    Columns named in META_COLUMNS (age, sex, view, location, site, ...) are kept, and so is each of `keep_cols`.
    """
    where = str(table)
    if (label_cols is None) == (findings_col is None):
        raise DataError(f"{where}: give either label columns (--label-cols a,b) or a findings column (--findings-col)")
    if merges and not findings_col:
        raise ConfigError(f"{where}: --merge needs a findings column (--findings-col)")
    frame = read_table(table, text={path_col, patient_col})
    info: dict = {"csv": str(Path(table).resolve())}
    if views:
        frame = filter_views(frame, views, where, info)
    require_columns(frame, [path_col, patient_col, *(label_cols or []), *([findings_col] if findings_col else []),
                            *keep_cols], where, "pass the right --path-col/--patient-col/--label-cols/--findings-col"
                    "/--keep-cols")
    frame = frame.reset_index(drop=True)
    if frame[path_col].isna().any():
        rows = [int(i) + 2 for i in frame.index[frame[path_col].isna()][:5]]
        raise DataError(f"{where}: column {path_col!r} is empty in file row(s) {rows}")
    patients, keep, info["missing_patient"] = patient_column(frame[patient_col], frame[path_col], where, patient_col,
                                                             missing_patient)
    frame = frame.assign(**{patient_col: patients}).loc[keep].reset_index(drop=True)
    root = Path(images_root) if images_root else Path(table).resolve().parent
    image_ids, absolute = resolve_paths(frame[path_col].astype(str), root)
    refuse_same_files(absolute, frame[path_col].astype(str).tolist(), f"{where}: column {path_col!r}",
                      [int(i) + 2 for i in frame.index])
    frame = frame.assign(_image_id=image_ids, _absolute=absolute)  # filtered with the rows below
    if findings_col and is_multiclass(task):
        frame, matrix, labels = _multiclass_findings(frame, findings_col, sep, merges or {}, labels, where, info)
    elif findings_col:
        values = apply_merges(frame[findings_col], sep, merges or {}, where, findings_col) if merges else frame[findings_col]
        matrix, labels = parse_findings(values, where, findings_col, sep=sep, labels=labels, info=info)
        info["merges"] = merges or {}
    else:
        refuse_case_twins(list(label_cols or []), where, "label columns")
        matrix, labels = _label_columns(frame, list(label_cols or []), where), tuple(label_cols or [])
    base = pd.DataFrame({"image_id": frame["_image_id"], "patient_id": frame[patient_col].astype(str), "split": ""})
    absolute = frame["_absolute"].tolist()
    if check_images:
        if not root.is_dir():
            raise DataError(f"{root}: no such image folder; check --images-root")
        paths = pd.Series([p if os.path.isfile(p) else None for p in absolute], dtype=object)
        base, keep, missing = attach_paths(base, paths, where, f"the --path-col {path_col!r} values are read "
                                           f"relative to {root}: check --path-col and --images-root")
        matrix, frame = matrix[keep], frame.loc[keep].reset_index(drop=True)
    else:
        base["path"], missing = absolute, []
    task = _csv_task(task, labels, matrix, where)
    info["images_root"] = str(root.resolve())
    return make_catalog(base, matrix, labels, task, "csv", info, _metadata(frame, keep_cols, where), missing)


def _label_columns(frame: pd.DataFrame, columns: list[str], where: str) -> np.ndarray:
    """Read ready-made label columns, insisting on 0/1 (or true/false) values."""
    out = np.zeros((len(frame), len(columns)), dtype=np.uint8)
    for j, col in enumerate(columns):
        values = frame[col]
        if values.dtype == bool:
            values = values.astype(int)
        numeric = pd.to_numeric(values, errors="coerce")
        bad = ~numeric.isin([0, 1])
        if bad.any():
            rows = [int(i) + 2 for i in values.index[bad][:5]]
            raise DataError(f"{where}: label column {col!r} holds values other than 0/1, e.g. "
                            f"{clipped(values[bad].astype(str).unique())} (file rows {rows})")
        out[:, j] = numeric.to_numpy(dtype=np.uint8)
    return out


def filter_views(frame: pd.DataFrame, views: list[str], where: str, info: dict) -> pd.DataFrame:
    """Keep the rows whose view column (any capitalisation) is one of `views` (case-insensitive); noted in info."""
    wanted = [v.strip().upper() for v in views if v.strip()]
    lower = {c.lower(): c for c in frame.columns}
    if "view" not in lower:
        raise DataError(f"{where}: --views needs a 'view' column (found: {clipped(frame.columns, 30)})")
    column = frame[lower["view"]].astype(str).str.strip().str.upper()
    keep = column.isin(wanted)
    if not keep.any():
        raise DataError(f"{where}: no rows with view in {clipped(wanted)} (found: {clipped(sorted(column.unique()), 10)}); "
                        "check --views")
    info["views"] = {"kept": wanted, "rows_left_out": int((~keep).sum())}
    return frame.loc[keep].reset_index(drop=True)


def _multiclass_findings(frame: pd.DataFrame, column: str, sep: str, merges: dict[str, str],
                         classes: tuple[str, ...] | None, where: str, info: dict) -> tuple[pd.DataFrame, np.ndarray, tuple[str, ...]]:
    """One-hot class matrix from a findings column; rows with no or several classes are left out with a warning."""
    per_row, bad_rows = classes_from_findings(frame[column], where, column, sep, merges)
    if bad_rows:
        examples = clipped(frame.loc[per_row.isna(), column].astype(str).unique())
        log.warning("%s: %d row(s) have no or several classes in %r after merging (e.g. %s, file rows %s); a "
                    "multiclass task needs exactly one, so they are left out (merge them with --merge)",
                    where, len(bad_rows), column, examples, bad_rows[:5])
    info["merges"] = merges
    info["rows_without_one_class"] = {"count": len(bad_rows), "file_rows": bad_rows[:20]}
    keep = per_row.notna().to_numpy()
    if not keep.any():
        raise DataError(f"{where}: no row of {column!r} names exactly one class; check --sep and --merge")
    frame, per_row = frame.loc[keep].reset_index(drop=True), per_row[keep].reset_index(drop=True)
    counts = Counter(per_row.tolist())
    mapping = case_merges(counts, classes or ())
    per_row = per_row.map(lambda c: mapping.get(c, c))
    info["label_case_merged"] = report_case_merges(mapping, counts, f"{where}: column {column!r}", "class")
    found = class_order(set(per_row))
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{where}: column {column!r} has class(es) {clipped(unknown, 10)} outside {list(classes)}")
    labels = tuple(classes) if classes is not None else found
    if len(labels) < 2:
        raise DataError(f"{where}: only one class ({quote(labels[0], 60)}) in {column!r}; a classifier needs at least "
                        "two")
    return frame, one_hot(per_row.to_numpy(), labels), labels


def _csv_task(task: str, labels: tuple[str, ...], matrix: np.ndarray, where: str) -> str:
    """The task of a CSV catalog: 'auto' is binary for one label else multilabel; multiclass rows must be one-hot."""
    if task == "auto":
        return "binary" if len(labels) == 1 else "multilabel"
    if task == "binary" and len(labels) != 1:
        raise ConfigError(f"{where}: --task binary needs one label; found {len(labels)} ({list(labels)})")
    if is_multiclass(task):
        check_one_hot(matrix, where)
    return task
