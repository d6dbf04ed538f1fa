"""Class-folder collections: ROOT/CLASS/* or ROOT/train|val|test/CLASS/* (e.g. Kaggle NORMAL/PNEUMONIA).

Patient ids come from file names (see `patient_ids`); a split given by the folders is kept.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from chestxray.data.catalog import Catalog
from chestxray.data.identity import case_merges, refuse_same_files, report_case_merges
from chestxray.data.sources.table import IMAGE_EXTENSIONS, make_catalog
from chestxray.data.tasks import KAGGLE_SUBTYPE_REGEX, KAGGLE_SUBTYPES, MULTICLASS, class_order, one_hot
from chestxray.errors import ConfigError, DataError, printable

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
NORMAL_CLASSES = frozenset({"normal", "no finding", "no_finding", "nofinding"})
# Default patient rule, tried in order on the file name without extension; the first group is the patient:
#   person123_bacteria_45  -> person123        (Kaggle pneumonia files)
#   00000011_000, 00000011_001 -> 00000011     (NIH ChestX-ray14 files: patient number _ follow-up number)
#   IM-0115-0001, NORMAL2-IM-0927-0001 -> IM-0115, NORMAL2-IM-0927  (name without the trailing -NNNN)
# A name no rule matches is its own patient (one patient per image); they are counted and warned about.
DEFAULT_PATIENT_RULES: tuple[str, ...] = (r"^(person\d+)_", r"^(\d+)_\d+$", r"^(.+)-\d+$")
PATIENT_RULE_HELP = ("patient id from the file name: 'personNNN_...' -> personNNN; NIH 'NNNNNNNN_NNN' -> NNNNNNNN; "
                     "'IM-NNNN-NNNN' or 'NORMAL2-IM-NNNN-NNNN' -> the name without its trailing -NNNN; otherwise one "
                     "patient per image (counted and warned about; --patient-regex gives another rule)")


def match_patients(stems: pd.Series, patient_regex: str | None = None) -> tuple[pd.Series, pd.Series]:
    """Patient id per file name stem (the first group of the first matching rule, else the stem itself) and a
    boolean mask of the stems no rule matched (each of those is its own patient)."""
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
        if todo.any():
            result[todo] = stems[todo].str.extract(pattern, expand=True).iloc[:, 0]
    unmatched = result.isna() | (result.astype(str).str.strip() == "")
    return result.where(~unmatched, stems).astype(str), unmatched


def patient_ids(stems: pd.Series, patient_regex: str | None = None) -> pd.Series:
    """Patient id per file name stem: the first group of the first matching rule, else the stem itself."""
    return match_patients(stems, patient_regex)[0]


def _warn_unmatched(root: Path, stems: pd.Series, unmatched: pd.Series, patient_regex: str | None) -> dict:
    """Log and return {count, examples} of the file names no patient rule matched (each became its own patient)."""
    count = int(unmatched.sum())
    examples = [printable(s) for s in stems[unmatched][:3]]
    if count:
        rule = f" (--patient-regex {patient_regex!r})" if patient_regex else ""
        log.warning("%s: %d of %d file name(s) match no patient rule%s, e.g. %s; each is counted as its own patient. "
                    "If a patient can have several images, pass --patient-regex with group 1 = the patient id "
                    "(e.g. '^(P\\d+)_' for P123_1.png and P123_2.png)", root, count, len(stems), rule,
                    ", ".join(examples))
    return {"count": count, "examples": examples}


def _utf8(name: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python hands them over with surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scan(root: Path) -> tuple[pd.DataFrame, bool, dict]:
    """One os.walk that follows folder links (not loops): rows (rel, path, stem, split, cls) for every
    image, whether split folders were used, and what was skipped with a word: folders that cannot be read,
    names that are not UTF-8 (the catalog is UTF-8 text; such a name could not be written into it) and files that
    are not images (counted by extension; hidden files are not counted)."""
    try:
        top = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _utf8(p.name))
    except OSError as exc:
        raise DataError(f"{root}: cannot list the folder ({exc.strerror or exc}); check its permissions") from None
    split_layout = bool(top) and all(name.lower() in SPLIT_FOLDERS for name in top)
    depth = 3 if split_layout else 2
    rows, outside = [], 0
    skipped: dict = {"unreadable_folders": [], "names_not_utf8": []}
    other: Counter[str] = Counter()  # files that are not images, by extension
    chains: dict[str, frozenset[str]] = {}  # real folders on the way down to each walked folder (loop check)

    def unreadable(exc: OSError) -> None:
        skipped["unreadable_folders"].append(f"{printable(str(exc.filename))} ({exc.strerror or exc})")

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        real, above = os.path.realpath(folder), chains.get(os.path.dirname(folder), frozenset())
        if real in above:
            log.warning("%s: a folder link back to a folder above it (a loop); not followed", printable(folder))
            dirs[:] = []
            continue
        chains[folder] = above | {real}
        for name in [*dirs, *(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))]:
            if not _utf8(name) and not name.startswith("."):
                skipped["names_not_utf8"].append(printable(os.path.join(folder, name)))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _utf8(d))
        for name in sorted(files):
            if not name.startswith(".") and not name.lower().endswith(IMAGE_EXTENSIONS):
                other[Path(name).suffix.lower() or "(no extension)"] += 1
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS) or not _utf8(name):
                continue
            path = os.path.join(folder, name)
            parts = Path(os.path.relpath(path, root)).parts
            if len(parts) < depth:
                outside += 1
                continue
            split = SPLIT_FOLDERS[parts[0].lower()] if split_layout else ""
            rows.append((Path(*parts).as_posix(), os.path.abspath(path), Path(name).stem, split, parts[depth - 2]))
    if outside:
        log.warning("%s: %d image(s) lie outside a class folder and are ignored", root, outside)
    for key, what in (("unreadable_folders", "folder(s) cannot be read and are skipped"),
                      ("names_not_utf8", "name(s) are not UTF-8 and are left out (rename them)")):
        if skipped[key]:
            log.warning("%s: %d %s, e.g. %s", root, len(skipped[key]), what, "; ".join(skipped[key][:3]))
    skipped["not_images"] = {ext: n for ext, n in sorted(other.items(), key=lambda kv: (-kv[1], kv[0]))}
    if other:
        log.warning("%s: %d file(s) that are not images (%s) are ignored; images are %s", root, sum(other.values()),
                    ", ".join(f"{ext} {n}" for ext, n in skipped["not_images"].items()), "/".join(IMAGE_EXTENSIONS))
    return pd.DataFrame(rows, columns=["rel", "path", "stem", "split", "cls"]), split_layout, skipped


def read_folder(root: str | Path, *, patient_regex: str | None = None, keep_source_split: bool = True,
                task: str = "auto", class_regex: str | None = None, kaggle_subtypes: bool = False) -> Catalog:
    """Catalog a class-folder collection; accepts .png/.jpg/.jpeg/.dcm.

    task 'auto': two classes one of which is normal (NORMAL / No Finding / normal) give a binary task with
    labels = (other,); otherwise a multiclass task with one 0/1 column per class, normal first. task 'multiclass'
    always gives one column per class. class_regex (group 1 on the file name without extension) replaces the
    folder's class where it matches; kaggle_subtypes derives BACTERIA / VIRUS from Kaggle pneumonia file names
    (person1_bacteria_1, person1_virus_6). Patient ids: DEFAULT_PATIENT_RULES unless patient_regex (its first group)
    is given; names no rule matches are counted and warned about. Split folders (train/val/test) set the split unless
    keep_source_split is False.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; expected ROOT/CLASS/* or ROOT/train|val|test/CLASS/* images")
    files, split_layout, skipped = _scan(root)
    if files.empty:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} in "
                        "ROOT/CLASS/ or ROOT/train|val|test/CLASS/ folders)")
    refuse_same_files(files["path"].tolist(), files["rel"].tolist(), str(root))
    folder_classes = sorted(files["cls"].unique())
    if kaggle_subtypes or class_regex:
        files["cls"] = _classes_from_names(files, class_regex, kaggle_subtypes)
    spellings = Counter(files["cls"].tolist())
    mapping = case_merges(spellings)
    files["cls"] = files["cls"].map(lambda c: mapping.get(c, c))
    classes = list(class_order(set(files["cls"])))
    if len(classes) < 2:
        what = "class" if kaggle_subtypes or class_regex else "class folder"
        raise DataError(f"{root}: only one {what} ({classes[0]!r}); a classifier needs at least two")
    normal = [c for c in classes if c.lower() in NORMAL_CLASSES]
    if task not in ("auto", "binary", MULTICLASS):
        raise ConfigError(f"--task {task!r}: class folders hold one class per image; use auto, binary or multiclass")
    if task == "binary" and not (len(classes) == 2 and len(normal) == 1):
        raise ConfigError(f"{root}: --task binary needs two classes, one of them normal (found {classes})")
    if task != MULTICLASS and len(classes) == 2 and len(normal) == 1:
        labels, task = tuple(c for c in classes if c != normal[0]), "binary"
    else:
        labels, task = tuple(classes), MULTICLASS
    matrix = one_hot(files["cls"].to_numpy(), labels)
    patients, unmatched = match_patients(files["stem"], patient_regex)
    table = pd.DataFrame({"image_id": files["rel"], "path": files["path"], "patient_id": patients,
                          "split": files["split"] if keep_source_split else ""})
    counts = files["cls"].value_counts().sort_index()
    info = {"root": str(root.resolve()), "classes": {str(k): int(v) for k, v in counts.items()},
            "normal_class": normal[0] if normal else None, "split_folders": split_layout,
            "folder_classes": folder_classes, "class_rule": _class_rule(class_regex, kaggle_subtypes),
            "patient_rule": patient_regex or list(DEFAULT_PATIENT_RULES), "skipped": skipped,
            "patient_rule_unmatched": _warn_unmatched(root, files["stem"], unmatched, patient_regex),
            "label_case_merged": report_case_merges(mapping, spellings, str(root), "class")}
    return make_catalog(table, matrix, labels, task, "folder", info, {})


def _class_rule(class_regex: str | None, kaggle_subtypes: bool) -> str | None:
    """How classes were read from file names (recorded in the catalog), or None when folders alone set them."""
    if kaggle_subtypes:
        return f"Kaggle subtypes: {KAGGLE_SUBTYPE_REGEX!r} on the file name (case-insensitive) -> BACTERIA / VIRUS"
    return f"group 1 of {class_regex!r} on the file name replaces the folder class" if class_regex else None


def _classes_from_names(files: pd.DataFrame, class_regex: str | None, kaggle_subtypes: bool) -> pd.Series:
    """Per file: the class read from its name where the rule matches, else its folder's class."""
    if kaggle_subtypes and class_regex:
        raise ConfigError("give --kaggle-subtypes or --class-regex, not both")
    try:
        pattern = re.compile(KAGGLE_SUBTYPE_REGEX if kaggle_subtypes else str(class_regex),
                             re.IGNORECASE if kaggle_subtypes else 0)
    except re.error as exc:
        raise ConfigError(f"--class-regex {class_regex!r} is not a valid regular expression ({exc})") from exc
    if pattern.groups < 1:
        raise ConfigError(f"--class-regex {class_regex!r} needs a group, e.g. '_(bacteria|virus)_'")
    found = files["stem"].str.extract(pattern, expand=True).iloc[:, 0]
    if kaggle_subtypes:
        found = found.str.lower().map(KAGGLE_SUBTYPES)
        normal = files["cls"].str.lower().isin(NORMAL_CLASSES)
        odd = ~normal & found.isna()
        if odd.any():
            log.warning("%d non-normal file name(s) carry no bacteria/virus subtype, e.g. %s; they keep their "
                        "folder class", int(odd.sum()), list(files.loc[odd, "rel"][:3]))
        found = found.where(~normal)  # a NORMAL image stays NORMAL whatever its name says
    if found.isna().all():
        raise DataError(f"no file name matches {pattern.pattern!r} (e.g. {list(files['stem'][:3])}); "
                        "check --class-regex")
    return found.fillna(files["cls"]).astype(str)
