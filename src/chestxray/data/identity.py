"""One spelling per patient, image and label: the rules every source applies before a catalog is split.

A patient written `1`, `1.0` and `01` in one table is one person, and so is an image written `img/x.png`,
`./img/x.png` and `/data/img/x.png`; left as text they became three patients whose images landed in train *and*
test. The rules (recorded in catalog.json and named in the catalog summary when they changed anything):
- patient ids: surrounding spaces removed; an id that is a whole number, written with leading zeros or a zero
  fraction (`01`, `1.0`, `007.00`), becomes its plain decimal form (`1`, `7`); every other id is kept as written;
- image paths: resolved against the images root (`.` and `..` removed), compared by the file they reach after
  symbolic links; two rows reaching one file are refused (each image must be one row);
- label names: names that differ only by letter case (`Mass`, `mass`) are one label, spelled as the known schema
  spells it, else as most rows do; the merge is logged and recorded.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from chestxray.errors import DataError, clip, quote

log = logging.getLogger(__name__)

PATIENT_RULE = ("patient ids: spaces trimmed; whole numbers compared by value (leading zeros and a zero fraction "
                "dropped: '01', '1.0' -> '1'); other ids kept as written")
PATH_RULE = ("image paths: resolved against the images root ('./' and '..' removed, symbolic links followed); "
             "two rows naming one file are refused")
LABEL_RULE = "label names: spellings that differ only by letter case are one label"
_WHOLE_NUMBER = re.compile(r"^0*(\d+?)(?:\.0*)?$")


def normalize_patient_ids(ids: pd.Series) -> tuple[pd.Series, dict]:
    """Patient ids after PATIENT_RULE, and a report: the rule, how many cells changed, and how many spellings
    that were distinct as text became one patient (with examples)."""
    text = ids.astype(str).str.strip()
    numeric = text.str.extract(_WHOLE_NUMBER, expand=False)
    out = numeric.where(numeric.notna(), text)
    changed = out != ids.astype(str)
    report: dict = {"rule": PATIENT_RULE, "rewritten": int(changed.sum()), "merged": 0, "examples": {}}
    if changed.any():
        spellings = pd.DataFrame({"raw": text, "id": out}).drop_duplicates()
        groups = spellings.groupby("id")["raw"].agg(list)
        groups = groups[groups.map(len) > 1]
        report["merged"] = int(groups.map(len).sum() - len(groups))
        report["examples"] = {clip(k, 40): [clip(v, 40) for v in vals[:4]] for k, vals in groups.head(5).items()}
        if len(groups):
            log.info("patient ids: %d spelling(s) of the same number were merged into %d patient(s), e.g. %s "
                        "(%s)", report["merged"] + len(groups), len(groups), report["examples"], PATIENT_RULE)
    return out, report


def resolve_paths(values: Iterable[str], root: Path) -> tuple[list[str], list[str]]:
    """(image id, absolute path) per row: the id is the path relative to `root` in POSIX form ('./' and '..'
    removed) when the file lies under root, else the normalised absolute path."""
    root_abs = os.path.abspath(root)
    ids, paths = [], []
    for value in values:
        value = str(value).strip()
        path = os.path.normpath(value if os.path.isabs(value) else os.path.join(root_abs, value))
        rel = os.path.relpath(path, root_abs)
        inside = rel != os.pardir and not rel.startswith(os.pardir + os.sep)
        ids.append(Path(rel).as_posix() if inside else path)
        paths.append(path)
    return ids, paths


def refuse_same_files(paths: list[str], shown: list[str], where: str, rows: list[int] | None = None) -> None:
    """Raise DataError when two entries reach one file (compared after symbolic links); `shown` is how each entry
    was written, `rows` its file row (1-based with the header) when it comes from a table."""
    folders: dict[str, str] = {}  # realpath per folder: one resolution per folder, not per file

    def resolve(path: str) -> str:
        if os.path.islink(path):
            return os.path.realpath(path)
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return os.path.join(folders[folder], name)

    real = pd.Series([resolve(p) for p in paths], dtype=object)
    dup = real.duplicated(keep=False)
    if not dup.any():
        return
    first = real[dup].iloc[0]
    same = [i for i in range(len(paths)) if real[i] == first]
    spelled = ", ".join(f"{quote(shown[i], 80)}" + (f" (file row {rows[i]})" if rows else "") for i in same[:5])
    groups = int(real[dup].nunique())
    raise DataError(f"{where}: {int(dup.sum())} entries name only {groups} file(s): e.g. {spelled} are all "
                    f"{quote(first, 120)}; each image must appear once: remove the repeated rows or links")


def case_merges(counts: Counter, known: Iterable[str] = ()) -> dict[str, str]:
    """{variant: chosen spelling} for names that differ only by letter case. The chosen spelling is the one in
    `known` (the schema's), else the one with the most rows (ties: alphabetical)."""
    known = list(known)
    groups: dict[str, list[str]] = {}
    for name in counts:
        groups.setdefault(name.casefold(), []).append(name)
    mapping: dict[str, str] = {}
    for key, names in groups.items():
        schema = [k for k in known if k.casefold() == key]
        if len(names) < 2 and (not schema or names[0] == schema[0]):
            continue
        chosen = schema[0] if schema else sorted(names, key=lambda n: (-counts[n], n))[0]
        mapping.update({n: chosen for n in names if n != chosen})
    return mapping


def report_case_merges(mapping: dict[str, str], counts: Counter, where: str, what: str = "label") -> dict:
    """Log the case merges and return them for catalog.json ({variant: {"into": name, "rows": n}})."""
    if mapping:
        log.info("%s: %s names that differ only by letter case are merged: %s (%s)", where, what,
                    ", ".join(f"{quote(v, 40)} -> {quote(k, 40)} ({counts[v]} rows)" for v, k in
                              list(mapping.items())[:10]), LABEL_RULE)
    return {v: {"into": k, "rows": int(counts[v])} for v, k in mapping.items()}


def refuse_case_twins(names: list[str], where: str, what: str) -> None:
    """Raise DataError when two given names (e.g. label columns) differ only by letter case."""
    seen: dict[str, str] = {}
    for name in names:
        twin = seen.setdefault(name.casefold(), name)
        if twin != name:
            raise DataError(f"{where}: {what} {quote(twin, 60)} and {quote(name, 60)} differ only by letter case, "
                            "so they would be two labels for one finding; give one of them (or merge the columns)")


def normalisation_notes(info: dict) -> str:
    """What the identity rules changed, for the end of the catalog summary line ('' when nothing changed)."""
    notes = []
    patients = info.get("patient_ids") or {}
    if patients.get("merged"):
        example = next(iter(patients["examples"].items()), None)
        shown = f", e.g. {' / '.join(example[1])} -> {example[0]}" if example else ""
        notes.append(f"{patients['merged']} patient-id spelling(s) merged (whole numbers compared by value{shown})")
    merged = info.get("label_case_merged") or {}
    if merged:
        notes.append("label spelling(s) merged by letter case: " +
                     ", ".join(f"{v} -> {m['into']}" for v, m in list(merged.items())[:5]))
    skipped = info.get("skipped") or {}
    if skipped.get("unreadable_folders"):
        found = skipped["unreadable_folders"]
        notes.append(f"{len(found)} unreadable folder(s) skipped, e.g. {found[0]}")
    if skipped.get("names_not_utf8"):
        found = skipped["names_not_utf8"]
        notes.append(f"{len(found)} non-UTF-8 name(s) left out (rename them), e.g. {found[0]}")
    if skipped.get("not_images"):
        counts = skipped["not_images"]
        notes.append(f"{sum(counts.values())} non-image file(s) ignored ("
                     + ", ".join(f"{ext} {n}" for ext, n in counts.items()) + ")")
    unmatched = info.get("patient_rule_unmatched") or {}
    if unmatched.get("count"):
        notes.append(f"{unmatched['count']} file name(s) matched no patient rule, one patient each (e.g. "
                     f"{unmatched['examples'][0]}; --patient-regex sets the rule)")
    return "".join(f"; {n}" for n in notes)
