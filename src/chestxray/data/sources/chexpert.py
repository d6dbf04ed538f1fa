"""CheXpert / MIMIC-CXR label tables (the CheXpert labeler's convention): one row an image, one column a finding
holding 1 (positive), 0 (negative), -1 (uncertain) or nothing (not mentioned).

Uncertain labels follow a policy (Irvin et al. 2019, CheXpert, AAAI): 'ones' (U-Ones: uncertain = positive),
'zeros' (U-Zeros: negative) or 'ignore' (U-Ignore: missing, so the loss, metrics and thresholds skip it), for all
findings or per finding ('ignore,Atelectasis=ones,Edema=ones'). A blank cell is 'negative' (as Irvin et al. train)
or 'missing' (as torchxrayvision reads it); either way a row with 'No Finding' = 1 is negative for every finding
but Support Devices. The policies are recorded in catalog.json (info['uncertain'], info['blank']); the finding
names stay CheXpert's ('Pleural Effusion'), and `catalog merge` maps them onto NIH's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog
from chestxray.data.identity import refuse_same_files, resolve_paths
from chestxray.data.sources.table import (
    _metadata,
    attach_paths,
    make_catalog,
    patient_column,
    read_table,
    require_columns,
)
from chestxray.errors import ConfigError, DataError, clipped

CHEXPERT14: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)
NO_FINDING = "No Finding"
POLICIES = ("ones", "zeros", "ignore")
BLANKS = ("negative", "missing")
PATIENT_REGEX = r"(patient\d+)"  # CheXpert paths: .../train/patient00001/study1/view1_frontal.jpg
# CheXpert column -> catalog metadata column (MIMIC tables carry their own names; --keep-cols adds any)
METADATA = {"Sex": "sex", "Age": "age", "AP/PA": "view", "Frontal/Lateral": "frontal_lateral"}


def parse_policy(text: str, labels: tuple[str, ...]) -> dict[str, str]:
    """'ignore' or 'zeros,Atelectasis=ones,Edema=ones' -> policy per label (ConfigError naming a bad part)."""
    default, per = None, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.rpartition("=")
        value = value.strip().lower()
        if value not in POLICIES:
            raise ConfigError(f"--uncertain {text!r}: {value!r} is not one of {list(POLICIES)} (U-Ones, U-Zeros, "
                              "U-Ignore of Irvin et al. 2019)")
        if not eq:
            default = value
        elif name.strip() not in labels:
            raise ConfigError(f"--uncertain {text!r}: {name.strip()!r} is not a label column ({list(labels)})")
        else:
            per[name.strip()] = value
    if default is None and len(per) < len(labels):
        raise ConfigError(f"--uncertain {text!r}: give a policy for every finding, e.g. 'ignore,Edema=ones'")
    return {name: per.get(name, default or "ignore") for name in labels}


def apply_policies(values: pd.DataFrame, policy: dict[str, str], blank: str,
                   no_finding: pd.Series | None = None) -> np.ndarray:
    """(N, L) float 1/0/NaN from CheXpert-coded columns (1, 0, -1, blank) under the uncertain and blank policies."""
    if blank not in BLANKS:
        raise ConfigError(f"--blank {blank!r} is not one of {list(BLANKS)}")
    out = np.full(values.shape, np.nan)
    healthy = (pd.to_numeric(no_finding, errors="coerce") == 1).to_numpy() if no_finding is not None else None
    for j, name in enumerate(values.columns):
        raw = pd.to_numeric(values[name], errors="coerce").to_numpy(dtype=np.float64)
        col = np.where(raw == -1, {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[policy[name]], raw)
        if blank == "negative":
            col = np.where(np.isnan(raw), 0.0, col)
        if healthy is not None and name != "Support Devices":
            col = np.where(healthy & np.isnan(raw), 0.0, col)
        out[:, j] = col
    return out


def read_chexpert(table: str | Path, images_root: str | Path | None = None, *, uncertain: str = "ignore",
                  blank: str = "negative", path_col: str = "Path", patient_col: str | None = None,
                  patient_regex: str = PATIENT_REGEX, label_cols: list[str] | None = None,
                  missing_patient: str = "error", check_images: bool = True) -> Catalog:
    """Catalog a CheXpert-convention table (CheXpert train.csv/valid.csv, MIMIC-CXR chexpert.csv joined to image
    paths). Paths are relative to `images_root` (default: the CSV's folder); the patient is `patient_col` or group 1
    of `patient_regex` on the path. Label columns: `label_cols`, else the CheXpert findings the table has."""
    where = str(table)
    frame = read_table(table, text={path_col, *([patient_col] if patient_col else [])})
    labels = tuple(label_cols) if label_cols else tuple(c for c in CHEXPERT14 if c in frame.columns)
    if not labels:
        raise DataError(f"{where}: no CheXpert finding columns (expected some of {list(CHEXPERT14)}; found "
                        f"{clipped(frame.columns, 20)}); name them with --label-cols")
    require_columns(frame, [path_col, *labels, *([patient_col] if patient_col else [])], where,
                    "pass --path-col / --patient-col / --label-cols")
    codes = frame[list(labels)].apply(pd.to_numeric, errors="coerce")
    odd = ~(codes.isin([1, 0, -1]) | codes.isna())
    if odd.to_numpy().any():
        col = codes.columns[odd.any().to_numpy()][0]
        raise DataError(f"{where}: column {col!r} holds values other than 1, 0, -1 or blank, e.g. "
                        f"{clipped(frame.loc[odd[col], col].astype(str).unique())}")
    policy = parse_policy(uncertain, labels)
    if patient_col:
        raw_patients = frame[patient_col]
    else:
        raw_patients = frame[path_col].astype(str).str.extract(patient_regex, flags=re.IGNORECASE, expand=False)
    patients, keep, missing_report = patient_column(raw_patients, frame[path_col], where,
                                                    patient_col or f"patient from {path_col} ({patient_regex})",
                                                    missing_patient)
    frame = frame.assign(_patient=patients).loc[keep].reset_index(drop=True)
    matrix = apply_policies(frame[list(labels)], policy, blank, frame.get(NO_FINDING))
    root = Path(images_root) if images_root else Path(table).resolve().parent
    image_ids, absolute = resolve_paths(frame[path_col].astype(str), root)
    refuse_same_files(absolute, frame[path_col].astype(str).tolist(), f"{where}: column {path_col!r}")
    base = pd.DataFrame({"image_id": image_ids, "patient_id": frame["_patient"].astype(str), "split": ""})
    missing: list[str] = []
    if check_images:
        paths = pd.Series([p if Path(p).is_file() else None for p in absolute], dtype=object)
        base, kept, missing = attach_paths(base, paths, where, f"paths are read relative to {root}: check "
                                           "--images-root")
        matrix, frame = matrix[kept], frame.loc[kept].reset_index(drop=True)
    else:
        base["path"] = absolute
    renamed = frame.rename(columns={k: v for k, v in METADATA.items() if k in frame})
    meta = _metadata(renamed, [c for c in ("frontal_lateral",) if c in renamed], where)
    counts = {name: int((codes[name] == -1).sum()) for name in labels}
    info = {"csv": str(Path(table).resolve()), "images_root": str(root.resolve()), "missing_patient": missing_report,
            "uncertain": {"policy": policy, "uncertain_cells": counts,
                          "rule": "Irvin et al. 2019: ones = U-Ones, zeros = U-Zeros, ignore = U-Ignore (missing)"},
            "blank": blank}
    return make_catalog(base, matrix, labels, "multilabel", "chexpert", info, meta, missing)
