"""Class-folder collections: ROOT/CLASS/* or ROOT/train|val|test/CLASS/* (e.g. Kaggle NORMAL/PNEUMONIA).

Patient ids come from file names (see `patient_ids`); a split given by the folders is kept.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog
from chestxray.data.sources.table import IMAGE_EXTENSIONS, make_catalog
from chestxray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
NORMAL_CLASSES = frozenset({"normal", "no finding", "no_finding", "nofinding"})
# Default patient rule, tried in order on the file name without extension; the first group is the patient:
#   person123_bacteria_45  -> person123        (Kaggle pneumonia files)
#   IM-0115-0001, NORMAL2-IM-0927-0001 -> IM-0115, NORMAL2-IM-0927  (name without the trailing -NNNN)
# Any other name is its own patient (one patient per image).
DEFAULT_PATIENT_RULES: tuple[str, ...] = (r"^(person\d+)_", r"^(.+)-\d+$")
PATIENT_RULE_HELP = ("patient id from the file name: 'personNNN_...' -> personNNN; 'IM-NNNN-NNNN' or "
                     "'NORMAL2-IM-NNNN-NNNN' -> the name without its trailing -NNNN; otherwise one patient per image")


def patient_ids(stems: pd.Series, patient_regex: str | None = None) -> pd.Series:
    """Patient id per file name stem: the first group of the first matching rule, else the stem itself."""
    rules = (patient_regex,) if patient_regex else DEFAULT_PATIENT_RULES
    result = pd.Series([None] * len(stems), index=stems.index, dtype=object)
    for rule in rules:
        try:
            pattern = re.compile(rule)
        except re.error as exc:
            raise ConfigError(f"--patient-regex {rule!r} is not a valid regular expression ({exc})") from exc
        if pattern.groups < 1:
            raise ConfigError(f"--patient-regex {rule!r} needs a group, e.g. '^(person\\d+)_'")
        todo = result.isna()
        result[todo] = stems[todo].str.extract(pattern, expand=True).iloc[:, 0]
    unmatched = result.isna()
    if patient_regex and unmatched.any():
        log.warning("--patient-regex %r matched no patient in %d file name(s), e.g. %s; each is its own patient",
                    patient_regex, int(unmatched.sum()), list(stems[unmatched][:3]))
    return result.where(~unmatched, stems).astype(str)


def _scan(root: Path) -> tuple[pd.DataFrame, bool]:
    """One os.walk: rows (rel, path, stem, split, cls) for every image, and whether split folders were used."""
    top = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_layout = bool(top) and all(name.lower() in SPLIT_FOLDERS for name in top)
    depth = 3 if split_layout else 2
    rows, skipped = [], 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, name)
            parts = Path(os.path.relpath(path, root)).parts
            if len(parts) < depth:
                skipped += 1
                continue
            split = SPLIT_FOLDERS[parts[0].lower()] if split_layout else ""
            rows.append((Path(*parts).as_posix(), os.path.abspath(path), Path(name).stem, split, parts[depth - 2]))
    if skipped:
        log.warning("%s: %d image(s) lie outside a class folder and are ignored", root, skipped)
    return pd.DataFrame(rows, columns=["rel", "path", "stem", "split", "cls"]), split_layout


def read_folder(root: str | Path, *, patient_regex: str | None = None, keep_source_split: bool = True) -> Catalog:
    """Catalog a class-folder collection; accepts .png/.jpg/.jpeg/.dcm.

    Two classes one of which is normal (NORMAL / No Finding / normal) give a binary task with labels = (other,);
    otherwise a multiclass task with one 0/1 column per class folder. Patient ids: DEFAULT_PATIENT_RULES unless
    patient_regex (its first group) is given. Split folders (train/val/test) set the split unless
    keep_source_split is False.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; expected ROOT/CLASS/* or ROOT/train|val|test/CLASS/* images")
    files, split_layout = _scan(root)
    if files.empty:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} in "
                        "ROOT/CLASS/ or ROOT/train|val|test/CLASS/ folders)")
    classes = sorted(files["cls"].unique())
    if len(classes) < 2:
        raise DataError(f"{root}: only one class folder ({classes[0]!r}); a classifier needs at least two")
    normal = [c for c in classes if c.lower() in NORMAL_CLASSES]
    if len(classes) == 2 and len(normal) == 1:
        labels, task = tuple(c for c in classes if c != normal[0]), "binary"
    else:
        labels, task = tuple(classes), "multiclass"
    matrix = (files["cls"].to_numpy()[:, None] == np.array(labels, dtype=object)[None, :]).astype(np.uint8)
    table = pd.DataFrame({"image_id": files["rel"], "path": files["path"],
                          "patient_id": patient_ids(files["stem"], patient_regex),
                          "split": files["split"] if keep_source_split else ""})
    counts = files["cls"].value_counts().sort_index()
    info = {"root": str(root.resolve()), "classes": {str(k): int(v) for k, v in counts.items()},
            "normal_class": normal[0] if task == "binary" else None, "split_folders": split_layout,
            "patient_rule": patient_regex or list(DEFAULT_PATIENT_RULES)}
    return make_catalog(table, matrix, labels, task, "folder", info, {})
