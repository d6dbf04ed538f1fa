"""Task types over one label schema: a multi-class task is one-hot label columns (exactly one 1 a row, one column a
class, the normal class included), read with softmax and argmax instead of per-label sigmoids and thresholds.

Everything downstream keeps its single path (labels = ordered names, a 0/1 matrix per split); only the output
activation, the loss and the metrics look at `task` (see `is_multiclass`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import ConfigError, DataError

MULTICLASS = "multiclass"
TASK_CHOICES: tuple[str, ...] = ("auto", "multilabel", "binary", MULTICLASS)
NORMAL_CLASS_NAMES: frozenset[str] = frozenset({"normal", "no finding", "no_finding", "nofinding", "none"})
DECISION_RULE = "argmax: the class with the highest softmax probability (no per-class thresholds)"
# Kaggle pneumonia file names carry the subtype: person1_bacteria_1.jpeg, person100_virus_184.jpeg.
KAGGLE_SUBTYPES: dict[str, str] = {"bacteria": "BACTERIA", "virus": "VIRUS"}
KAGGLE_SUBTYPE_REGEX = r"_(bacteria|virus)_"


def is_multiclass(task: str | None) -> bool:
    """True for a task whose classes exclude each other (softmax + cross-entropy, argmax decision)."""
    return task == MULTICLASS


def check_task(task: str) -> str:
    """Validate a --task value (auto, multilabel, binary, multiclass) before any data is read."""
    if task not in TASK_CHOICES:
        raise ConfigError(f"--task {task!r} is not one of {list(TASK_CHOICES)}")
    return task


def probabilities(logits: Any, task: str | None) -> Any:
    """Output probabilities (B, L) from logits (B, L) tensors: softmax over classes (multiclass), else sigmoid."""
    return logits.softmax(dim=1) if is_multiclass(task) else logits.sigmoid()


def class_order(classes: list[str] | set[str]) -> tuple[str, ...]:
    """Classes sorted by name with the normal class (NORMAL, No Finding, ...) first, as the reference class."""
    return tuple(sorted(classes, key=lambda c: (c.strip().lower() not in NORMAL_CLASS_NAMES, c)))


def one_hot(classes_per_row: np.ndarray | pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    """(N, K) uint8 one-hot matrix of each row's class name in `classes` order."""
    values = np.asarray(classes_per_row, dtype=object)
    return (values[:, None] == np.array(classes, dtype=object)[None, :]).astype(np.uint8)


def check_one_hot(matrix: np.ndarray, where: str) -> None:
    """Raise a DataError unless every row of a multi-class label matrix has exactly one 1."""
    per_row = np.asarray(matrix).sum(1)
    bad = np.flatnonzero(per_row != 1)
    if bad.size:
        raise DataError(f"{where}: {bad.size} row(s) of a multiclass catalog do not have exactly one class "
                        f"(e.g. rows {bad[:5].tolist()} have {per_row[bad[:5]].tolist()}); "
                        "rebuild the catalog with --task multiclass")


def parse_merges(specs: list[str] | None) -> dict[str, str]:
    """'NEW=old1,old2' specs → {old name: new name}; a name merged into two classes is a ConfigError."""
    mapping: dict[str, str] = {}
    for spec in specs or []:
        new, eq, olds = spec.partition("=")
        names = [o.strip() for o in olds.split(",") if o.strip()]
        if not eq or not new.strip() or not names:
            raise ConfigError(f"--merge {spec!r}: expected NEW=old1,old2 (e.g. 'Bacterial=Streptococcus,Klebsiella')")
        for old in names:
            if old in mapping and mapping[old] != new.strip():
                raise ConfigError(f"--merge: {old!r} is merged into both {mapping[old]!r} and {new.strip()!r}")
            mapping[old] = new.strip()
    return mapping


def _names_per_row(values: pd.Series, sep: str) -> list[list[str]]:
    """Finding names of each cell, split on any character of `sep` and stripped (a blank cell has none)."""
    splitter = re.compile("[" + re.escape(sep) + "]")
    return [[n.strip() for n in splitter.split(v) if n.strip()] if isinstance(v, str) else []
            for v in values.astype(object).tolist()]


def _merged(values: pd.Series, sep: str, merges: dict[str, str], where: str, column: str) -> list[list[str]]:
    """Each row's names after merging (repeats dropped, order kept); a merge naming nothing found is an error."""
    rows = _names_per_row(values, sep)
    unused = sorted(set(merges) - {n for names in rows for n in names})
    if unused:
        raise ConfigError(f"{where}: --merge names {unused} occur nowhere in column {column!r}; check the spelling "
                          f"(and --sep {sep!r})")
    return [list(dict.fromkeys(merges.get(n, n) for n in names)) for names in rows]


def apply_merges(values: pd.Series, sep: str, merges: dict[str, str], where: str, column: str) -> pd.Series:
    """The findings column with merged names, re-joined by the first `sep` character (for multi-label parsing)."""
    rows = _merged(values, sep, merges, where, column)
    return pd.Series([sep[0].join(names) for names in rows], index=values.index, dtype=object)


def classes_from_findings(values: pd.Series, where: str, column: str, sep: str,
                          merges: dict[str, str]) -> tuple[pd.Series, list[int]]:
    """One class name per row from a findings column (names split on the characters of `sep`, then merged).

    'No Finding'/'normal' is a class like any other here. Returns the class per row (None where the row has no
    name or several classes after merging) and the file rows (1-based, header = 1) of those left-out rows."""
    rows = _merged(values, sep, merges, where, column)
    classes = pd.Series([names[0] if len(names) == 1 else None for names in rows], index=values.index, dtype=object)
    bad_rows = [int(i) + 2 for i in values.index[classes.isna().to_numpy()]]
    return classes, bad_rows


def absent_from_splits(table: pd.DataFrame, labels: tuple[str, ...],
                       splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, list[str]]:
    """{label: [splits where it has no positive image]} for labels missing from a split that has images."""
    present = [s for s in splits if (table["split"] == s).any()]
    out: dict[str, list[str]] = {}
    for name in labels:
        missing = [s for s in present if not table.loc[table["split"] == s, name].fillna(0).astype(bool).any()]
        if missing:
            out[name] = missing
    return out
