"""The catalog: one table, one row an image (image_id, path, patient_id, one 0/1 column per label, split, metadata).

Saved as a folder: catalog.csv (the table) and catalog.json (labels, task, source and how the split was made).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chestxray.data.identity import PATIENT_RULE, normalize_patient_ids
from chestxray.data.tasks import check_one_hot, is_multiclass
from chestxray.errors import DataError
from chestxray.files import read_csv, write_csv, write_json

CATALOG_CSV = "catalog.csv"
CATALOG_JSON = "catalog.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "path", "patient_id", "split")
TASKS: tuple[str, ...] = ("multilabel", "binary", "multiclass")


@dataclass
class Catalog:
    """A labelled image table plus its schema.

    table: columns image_id, path, patient_id, split ('train'|'val'|'test' or '' before splitting),
    one uint8 0/1 column per name in `labels` (in that order), then optional metadata (age, sex, view, ...).
    A row with all label columns 0 is 'normal' (NIH 'No Finding', Kaggle NORMAL). A merged catalog
    (chestxray.data.merge) may leave a label MISSING for a source that never annotated it: NaN in a float column
    (an empty cell in catalog.csv), never 0; its `source` column names each row's source.
    """

    table: pd.DataFrame
    labels: tuple[str, ...]
    task: str = "multilabel"
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)

    @property
    def label_matrix(self):
        """(n_images, n_labels) uint8 array of the label columns in schema order (a missing label reads 0: use
        `annotated` to tell it from a negative)."""
        return self.table[list(self.labels)].fillna(0).to_numpy(dtype="uint8")

    @property
    def annotated(self):
        """(n_images, n_labels) bool array: True where the label is given (0 or 1), False where it is missing."""
        return self.table[list(self.labels)].notna().to_numpy()

    @property
    def has_missing(self) -> bool:
        """True when some label is missing for some image (a merged catalog)."""
        return bool(self.table[list(self.labels)].isna().to_numpy().any())

    def split_table(self, split: str) -> pd.DataFrame:
        return self.table[self.table["split"] == split]


def validate_catalog(catalog: Catalog, where: str = "catalog") -> None:
    """Check the contract: required columns, unique image ids, 0/1 labels, and no patient in two splits."""
    table = catalog.table
    missing = [c for c in (*REQUIRED_COLUMNS, *catalog.labels) if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing} (found: {list(table.columns)})")
    if catalog.task not in TASKS:
        raise DataError(f"{where}: unknown task {catalog.task!r}; expected one of {TASKS}")
    if table.empty:
        raise DataError(f"{where}: the table has no rows")
    no_patient = table["patient_id"].isna() | (table["patient_id"].astype(str).str.strip() == "")
    if no_patient.any():
        raise DataError(f"{where}: {int(no_patient.sum())} row(s) have no patient id (e.g. image "
                        f"{table['image_id'][no_patient].iloc[0]!r}); every image needs one so splits stay by patient")
    dup = table["image_id"][table["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{where}: {len(dup)} duplicate image id(s), e.g. {list(dup.unique()[:5])}; each image must appear once")
    bad = [c for c in catalog.labels if not (table[c].isin([0, 1]) | table[c].isna()).all()]
    if bad:
        raise DataError(f"{where}: label column(s) {bad} hold values other than 0/1 (or empty: missing)")
    never = [c for c in catalog.labels if table[c].isna().all()]
    if never:
        raise DataError(f"{where}: label(s) {never} are missing for every image; no image says anything about them "
                        "(leave them out of the label map's vocabulary)")
    if is_multiclass(catalog.task):
        if catalog.has_missing:
            raise DataError(f"{where}: a multiclass catalog cannot leave labels missing (each image has one class)")
        check_one_hot(catalog.label_matrix, where)
    assigned = table[table["split"].isin(SPLITS)]
    per_patient = assigned.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise DataError(
            f"{where}: {len(leaked)} patient(s) appear in more than one split, e.g. {list(leaked.index[:5])}; "
            "splits must be by patient (rebuild the split)"
        )
    same = normalize_patient_ids(assigned["patient_id"])[0]  # '1' and '01' (a catalog written before the rule)
    per_person = assigned.groupby(same.to_numpy())["split"].nunique()
    leaked = per_person[per_person > 1]
    if len(leaked):
        spellings = sorted(set(assigned["patient_id"][same == leaked.index[0]]))[:4]
        raise DataError(f"{where}: {len(leaked)} patient(s) written in several ways lie in more than one split, e.g. "
                        f"{spellings} ({PATIENT_RULE}); rebuild the catalog with 'chestxray catalog', which writes "
                        "one spelling per patient")


def save_catalog(catalog: Catalog, out_dir: str | Path) -> Path:
    """Validate and write catalog.csv + catalog.json into out_dir (atomically); returns the folder."""
    validate_catalog(catalog, where=str(out_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / CATALOG_CSV, catalog.table)
    meta = {"format": "chestxray-catalog/1", "labels": list(catalog.labels), "task": catalog.task,
            "source": catalog.source, "info": catalog.info}
    write_json(out / CATALOG_JSON, meta)
    return out


def load_catalog(path: str | Path) -> Catalog:
    """Read a catalog folder (or its catalog.csv) written by save_catalog."""
    path = Path(path)
    folder = path.parent if path.name == CATALOG_CSV else path
    csv_path, json_path = folder / CATALOG_CSV, folder / CATALOG_JSON
    if not folder.exists():
        raise DataError(f"{folder}: no such catalog folder; create one with 'chestxray catalog nih|folder|csv ... --out {folder}'")
    if not csv_path.exists() or not json_path.exists():
        raise DataError(f"{folder}: not a catalog (expected {CATALOG_CSV} and {CATALOG_JSON}); create one with 'chestxray catalog'")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc}); rebuild the catalog") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise DataError(f"{json_path}: no 'labels' list; rebuild the catalog with 'chestxray catalog'")
    table = read_csv(csv_path, dtype={"image_id": str, "patient_id": str, "path": str, "split": str},
                        keep_default_na=False, na_values=[""])
    table["split"] = table["split"].fillna("")
    for name in meta["labels"]:
        if name in table and table[name].isin([0, 1]).all():  # anything else is reported by validate_catalog
            table[name] = table[name].astype("uint8")
        elif name in table and (table[name].isin([0, 1]) | table[name].isna()).all():  # missing: NaN, floats
            table[name] = table[name].astype("float64")
    catalog = Catalog(table=table, labels=tuple(meta["labels"]), task=meta.get("task", "multilabel"),
                      source=meta.get("source", ""), info=meta.get("info", {}))
    validate_catalog(catalog, where=str(csv_path))
    return catalog
