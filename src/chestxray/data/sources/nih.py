"""NIH ChestX-ray14: the label table (Data_Entry_2017.csv or Data_Entry_2017_v2020.csv, plain or .gz) plus
an image folder (images_001/images/... nested or flat) or no images at all (metadata-only, for planning)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog
from chestxray.data.labels import NIH14
from chestxray.data.identity import normalize_patient_ids
from chestxray.data.sources.table import (
    attach_paths,
    check_unique,
    index_images,
    make_catalog,
    parse_findings,
    patient_column,
    read_table,
    require_columns,
    to_age,
)
from chestxray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_COL, FINDINGS_COL, PATIENT_COL = "Image Index", "Finding Labels", "Patient ID"
# Metadata kept in the catalog: NIH column -> catalog column. Both CSV versions share these names; the
# 2017 file's trailing unnamed column and v2020's split OriginalImage[Width,Height] columns are ignored.
METADATA = {"Patient Age": "age", "Patient Gender": "sex", "View Position": "view", "Follow-up #": "follow_up"}
OFFICIAL_LISTS = ("train_val_list.txt", "test_list.txt")


def read_nih(csv: str | Path, images: str | Path | None = None, *, views: list[str] | None = None,
             max_patients: int | None = None, seed: int = 0, official_split: str | Path | None = None,
             missing_patient: str = "error") -> Catalog:
    """Catalog NIH ChestX-ray14 from its label table; `images=None` is metadata-only (empty paths).

    views keeps only those View Position values (e.g. ['PA', 'AP']); max_patients keeps a seeded random subset of
    patients; official_split is a folder with train_val_list.txt and test_list.txt (test rows get split 'test',
    the others 'train', so only val is carved out later). Rows whose image is missing are left out and listed in
    info['missing_images']. Patient ids keep their text form; an empty one follows `missing_patient`
    (chestxray.data.sources.table.patient_column).
    """
    where = str(csv)
    frame = read_table(csv, keep={IMAGE_COL, FINDINGS_COL, PATIENT_COL, *METADATA}, text={IMAGE_COL, PATIENT_COL})
    require_columns(frame, [IMAGE_COL, FINDINGS_COL, PATIENT_COL], where,
                    "expected the NIH Data_Entry_2017.csv / Data_Entry_2017_v2020.csv layout")
    check_unique(frame[IMAGE_COL].astype(str), where, IMAGE_COL)
    patients, rows, missing_report = patient_column(frame[PATIENT_COL], frame[IMAGE_COL], where, PATIENT_COL,
                                                    missing_patient)
    frame = frame.assign(**{PATIENT_COL: patients})
    info: dict = {"csv": str(Path(csv).resolve()), "images": str(Path(images).resolve()) if images else None,
                  "metadata_only": images is None, "missing_patient": missing_report}
    matrix, labels = parse_findings(frame[FINDINGS_COL], where, FINDINGS_COL, sep="|", labels=NIH14, info=info)
    keep = rows.copy()
    if views:
        wanted = [v.strip().upper() for v in views if v.strip()]
        require_columns(frame, ["View Position"], where, "--views needs the 'View Position' column")
        keep &= frame["View Position"].astype(str).str.upper().isin(wanted).to_numpy()
        info["views"] = wanted
        if not keep.any():
            found = sorted(frame["View Position"].astype(str).unique())
            raise DataError(f"{where}: no rows with View Position in {wanted} (found: {found}); check --views")
    if max_patients is not None:
        keep &= _patient_subset(frame[PATIENT_COL].astype(str), keep, max_patients, seed)
        info["max_patients"] = {"n": max_patients, "seed": seed}
    frame, matrix = frame.loc[keep].reset_index(drop=True), matrix[keep]
    table = pd.DataFrame({"image_id": frame[IMAGE_COL].astype(str), "patient_id": frame[PATIENT_COL],
                          "split": ""})
    if official_split is not None:
        table["split"], listed = _official_split(Path(official_split), table["image_id"])
        frame, matrix = frame.loc[listed].reset_index(drop=True), matrix[listed]
        table = table.loc[listed].reset_index(drop=True)
        info["official_split"] = str(Path(official_split).resolve())
    missing: list[str] = []
    if images is None:
        table["path"] = ""
    else:
        index = index_images(images)
        table, kept, missing = attach_paths(table, table["image_id"].map(index), where,
                                             "check --images, or catalog without images: --metadata-only")
        frame, matrix = frame.loc[kept].reset_index(drop=True), matrix[kept]
    meta = {dst: frame[src] for src, dst in METADATA.items() if src in frame.columns}
    if "age" in meta:
        meta["age"] = to_age(meta["age"])
    return make_catalog(table, matrix, labels, "multilabel", "nih", info, meta, missing)


def _patient_subset(patients: pd.Series, keep: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Mask of rows from n patients drawn with a seeded generator from the sorted eligible patient ids."""
    if n < 1:
        raise ConfigError(f"--max-patients must be at least 1 (got {n})")
    patients = normalize_patient_ids(patients)[0]  # the catalog's rule, so '01' and '1' are drawn together
    eligible = np.sort(patients[keep].unique())
    if n >= len(eligible):
        return np.ones(len(patients), dtype=bool)
    chosen = np.random.default_rng(seed).choice(eligible, size=n, replace=False)
    return patients.isin(chosen).to_numpy()


def _official_split(folder: Path, image_ids: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Split per row from NIH's train_val_list.txt / test_list.txt; also the mask of rows listed in either."""
    lists = {}
    for name in OFFICIAL_LISTS:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: no such file; --official-split needs a folder with {' and '.join(OFFICIAL_LISTS)}")
        try:
            lists[name] = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text; expected one image file name per line") from exc
    both = lists["train_val_list.txt"] & lists["test_list.txt"]
    if both:
        raise DataError(f"{folder}: {len(both)} image(s) are in both lists, e.g. {sorted(both)[:3]}")
    is_test = image_ids.isin(lists["test_list.txt"])
    listed = (is_test | image_ids.isin(lists["train_val_list.txt"])).to_numpy()
    if not listed.all():
        log.warning("%s: %d row(s) are in neither list and are left out", folder, int((~listed).sum()))
    if not listed.any():
        raise DataError(f"{folder}: none of the catalog's images are in {OFFICIAL_LISTS}; is this the right folder?")
    return pd.Series(np.where(is_test, "test", "train")), listed
