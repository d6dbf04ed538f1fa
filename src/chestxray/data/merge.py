"""Merge several catalogs into one: one label vocabulary (chestxray.data.labelmap), a `source` column, a finding
a source never annotated kept missing, and one patient-level split stratified by source.

Rules (recorded in catalog.json under info['merge'] and info['split']):
- each input is a source, named by the caller (default: its folder name); a merged catalog given as input keeps the
  sources of its rows;
- patient ids become SOURCE:id: different collections number their patients independently, so NIH patient 1 and
  COVID-set patient 1 are different people (same_patients=True keeps the ids, for sources that share a numbering);
- image ids stay as they are, except where two sources use the same id: those sources' ids become SOURCE:id;
- byte-identical image files in two sources are found (files of equal size are hashed) and their patients linked,
  so a person whose image was redistributed in another collection never lands in train on one side and test on the
  other; the pairs are reported;
- the split is drawn per source, each source's patients split by the catalog's stratified-rarest-first rule within
  that source (so every source is split in the ratios: stratified by source), a linked group of patients going with
  the source holding most of its images; keep_splits keeps each input's own split instead (and refuses a linked
  group that straddles two splits);
- metadata columns (age, sex, view, location, …) are kept, empty where a source has none; an input's own column
  named `source` is renamed `original_source`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import REQUIRED_COLUMNS, SPLITS, Catalog, load_catalog
from chestxray.data.labelmap import LabelMap, SourceLabels, source_labels, to_vocabulary, vocabulary_order
from chestxray.data.split import METHOD, TEST_ONLY, _hash_codes, check_ratios, stratified_split
from chestxray.data.tasks import absent_from_splits
from chestxray.errors import ConfigError, DataError, quote

log = logging.getLogger(__name__)

SOURCE = "source"  # the merged catalog's column naming each row's source
MERGED = "merged"  # Catalog.source of a merged catalog


@dataclass(frozen=True)
class MergeInput:
    """One catalog to merge and the source name its rows get."""

    name: str
    catalog: Catalog
    where: str = ""


def parse_input(text: str) -> tuple[str, Path]:
    """'NAME=PATH' or 'PATH' (name: the folder's name) from the command line."""
    name, eq, path = text.partition("=")
    if eq and name.strip() and "/" not in name:
        return name.strip(), Path(path)
    folder = Path(text)
    return folder.name or str(folder), folder


def load_inputs(specs: Sequence[str]) -> list[MergeInput]:
    """Catalogs named on the command line ('NAME=PATH' or 'PATH'); at least two, distinct names."""
    if len(specs) < 2:
        raise ConfigError(f"catalog merge needs at least two catalogs (got {len(specs)}); e.g. "
                          "chestxray catalog merge nih=runs/nih-cat kaggle=runs/kaggle-cat --out runs/merged")
    inputs = []
    for spec in specs:
        name, path = parse_input(spec)
        inputs.append(MergeInput(name, load_catalog(path), str(path)))
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"catalog merge: source name(s) {twice} given twice; name each catalog: NAME=PATH")
    return inputs


def _is_merged(catalog: Catalog) -> bool:
    return SOURCE in catalog.table and bool(catalog.info.get("merge"))


def _source_tables(inputs: Sequence[MergeInput], label_map: LabelMap) -> list[tuple[str, pd.DataFrame, SourceLabels,
                                                                                      dict]]:
    """(source, its rows, how its labels map, its record) for every source of every input."""
    out = []
    for item in inputs:
        table = item.catalog.table.reset_index(drop=True)
        if _is_merged(item.catalog):
            for name, rows in table.groupby(SOURCE, sort=False):
                out.append((str(name), rows.reset_index(drop=True),
                            source_labels(str(name), item.catalog.labels, label_map),
                            {"catalog": item.where, "merged_input": True}))
            continue
        if SOURCE in table:
            table = table.rename(columns={SOURCE: "original_source"})
            log.info("%s: its column 'source' is kept as 'original_source' (the merged 'source' names the input)",
                     item.where)
        ids = table["patient_id"].astype(str)
        table = table.assign(patient_id=ids)
        record = {"catalog": item.where, "task": item.catalog.task, "labels": list(item.catalog.labels),
                  "reader": item.catalog.source}
        for key in ("uncertain", "blank"):
            if key in item.catalog.info:
                record[key] = item.catalog.info[key]
        out.append((item.name, table, source_labels(item.name, item.catalog.labels, label_map), record))
    names = [s for s, *_ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"catalog merge: source name(s) {sorted({n for n in names if names.count(n) > 1})} occur in "
                          "more than one input; rename the input (NAME=PATH)")
    return out


def _linked_groups(table: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
    """A group code per row joining patients whose images are byte-identical files in different sources, and the
    duplicate pairs found (image ids). Only files of equal size are hashed."""
    patients = table["patient_id"].astype(str).to_numpy()
    codes, uniques = pd.factorize(patients)
    parent = np.arange(len(uniques))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    paths = table["path"].astype(str).to_numpy()
    sizes = np.array([os.path.getsize(p) if p and os.path.isfile(p) else -1 for p in paths])
    sources = table[SOURCE].astype(str).to_numpy()
    pairs: list[list[str]] = []
    frame = pd.DataFrame({"size": sizes, "source": sources})
    candidates = frame[(frame["size"] > 0)].groupby("size")["source"].transform("nunique") > 1
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(candidates.reindex(frame.index, fill_value=False).to_numpy()):
        with open(paths[i], "rb") as fh:
            by_hash[hashlib.file_digest(fh, "sha256").hexdigest()].append(int(i))
    for rows in by_hash.values():
        if len({sources[i] for i in rows}) < 2:
            continue
        first = rows[0]
        for i in rows[1:]:
            if sources[i] != sources[first]:
                pairs.append([str(table["image_id"].iat[first]), str(table["image_id"].iat[i])])
            parent[find(codes[i])] = find(codes[first])
    roots = np.array([find(c) for c in range(len(uniques))])
    return roots[codes], pairs


def _split(table: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, ratios: tuple[float, float, float],
           seed: int) -> np.ndarray:
    """Split name per row: each source's patient groups split within the source (stratified-rarest-first), a group
    going with the source that holds most of its images."""
    sources = table[SOURCE].astype(str).to_numpy()
    home = pd.DataFrame({"g": groups, "s": sources}).groupby("g")["s"].agg(lambda s: s.value_counts().index[0])
    home_per_row = home.loc[groups].to_numpy()
    split = np.empty(len(table), dtype=object)
    for source in dict.fromkeys(sources):
        rows = np.flatnonzero(home_per_row == source)
        if ratios == TEST_ONLY:
            split[rows] = "test"
            continue
        part = stratified_split(groups[rows].astype(str), labels[rows], ratios, seed)
        split[rows] = np.asarray(SPLITS, dtype=object)[part]
    return split


def merge_catalogs(inputs: Sequence[MergeInput], label_map: LabelMap | None = None,
                   ratios: tuple[float, ...] = (0.7, 0.1, 0.2), seed: int = 0, *, keep_splits: bool = False,
                   same_patients: bool = False) -> Catalog:
    """One catalog from several (see the module docstring): vocabulary labels (NaN = missing), a `source` column,
    metadata kept, patients linked across sources, a split stratified by source (or each input's own)."""
    label_map = label_map or LabelMap()
    ratios = check_ratios(ratios)
    parts = _source_tables(inputs, label_map)
    vocabulary = vocabulary_order([r for _, _, r, _ in parts], label_map)
    frames, records = [], {}
    for name, table, resolved, record in parts:
        values = table[list(resolved.labels)].to_numpy(dtype=np.float64)
        mapped = to_vocabulary(values, resolved, vocabulary, f"{record['catalog']} ({name})")
        dropped = [t for t in (*resolved.annotated, *resolved.negative) if t not in vocabulary]
        frame = table.drop(columns=list(resolved.labels))
        frame[SOURCE] = name
        if not record.get("merged_input") and not same_patients:
            frame["patient_id"] = name + ":" + frame["patient_id"].astype(str)
        frame = pd.concat([frame.reset_index(drop=True), pd.DataFrame(mapped, columns=list(vocabulary))], axis=1)
        frames.append(frame)
        annotated = [t for t in vocabulary if not np.isnan(mapped[:, vocabulary.index(t)]).all()]
        records[name] = {**record, **resolved.to_dict(), "annotated": annotated, "images": len(frame),
                         "patients": int(frame["patient_id"].nunique()), "left_out_of_vocabulary": dropped,
                         "positives": {t: int(np.nansum(mapped[:, k])) for k, t in enumerate(vocabulary)
                                       if t in annotated}}
        if resolved.unknown:
            log.warning("source %r: label(s) %s are not in the label map; kept as labels of their own (add them to a "
                        "--map file to merge them with others)", name, list(resolved.unknown))
    table = pd.concat(frames, ignore_index=True)
    table = _unique_image_ids(table)
    never = [t for t in vocabulary if table[t].isna().all()]
    if never:
        raise ConfigError(f"label map: vocabulary label(s) {never} are annotated by no source; leave them out of "
                          "the vocabulary (or map a source label onto them)")
    groups, duplicates = _linked_groups(table)
    if duplicates:
        log.warning("%d image(s) are byte-identical files in two sources (e.g. %s); their patients are kept in one "
                    "split", len(duplicates), duplicates[0])
    labels_filled = table[list(vocabulary)].fillna(0).to_numpy(dtype=np.uint8)
    if keep_splits:
        split = table["split"].fillna("").astype(str).str.strip().str.lower().to_numpy()
        _check_kept(table, split, groups)
        method = "each source's own split kept"
    else:
        split = _split(table, labels_filled, groups, ratios, seed)
        method = ("test only (ratios 0,0,1: external validation)" if ratios == TEST_ONLY
                  else f"by source: {METHOD} within each source, patients linked across sources kept together")
    table["split"] = split
    table = _order_columns(table, vocabulary)
    for name in vocabulary:
        if not table[name].isna().any():
            table[name] = table[name].astype(np.uint8)
    info = {"merge": {"sources": records, "vocabulary": list(vocabulary), "label_map": label_map.to_dict(),
                      "same_patients": same_patients, "duplicates": {"count": len(duplicates),
                                                                     "first": duplicates[:10]},
                      "missing": "a label a source does not annotate is empty (NaN): missing, not negative"},
            "split": _split_info(table, split, groups, ratios, seed, method, tuple(vocabulary))}
    task = "binary" if len(vocabulary) == 1 else "multilabel"
    return Catalog(table=table, labels=tuple(vocabulary), task=task, source=MERGED, info=info)


def _unique_image_ids(table: pd.DataFrame) -> pd.DataFrame:
    """Prefix SOURCE: to the image ids of sources that share an id with another source."""
    ids = table["image_id"].astype(str)
    shared = ids.duplicated(keep=False)
    if not shared.any():
        return table
    clash = sorted(set(table.loc[shared, SOURCE].astype(str)))
    rows = table[SOURCE].astype(str).isin(clash)
    log.info("image ids shared by sources %s: their ids become SOURCE:id", clash)
    table = table.copy()
    table.loc[rows, "image_id"] = table.loc[rows, SOURCE].astype(str) + ":" + ids[rows]
    dup = table["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"catalog merge: image id {quote(table.loc[dup, 'image_id'].iloc[0], 80)} occurs twice within "
                        "one source; rebuild that catalog")
    return table


def _check_kept(table: pd.DataFrame, split: np.ndarray, groups: np.ndarray) -> None:
    """keep_splits: every row has a split and no linked patient group straddles two."""
    bad = ~np.isin(split, SPLITS)
    if bad.any():
        raise DataError(f"catalog merge --keep-splits: {int(bad.sum())} row(s) have no split (e.g. image "
                        f"{quote(table['image_id'].iloc[int(np.flatnonzero(bad)[0])], 80)}); leave out --keep-splits "
                        "to split the merged catalog by patient")
    per_group = pd.Series(split).groupby(groups).nunique()
    straddle = per_group[per_group > 1]
    if len(straddle):
        rows = np.flatnonzero(groups == straddle.index[0])
        shown = sorted(set(table["patient_id"].iloc[rows].astype(str)))[:4]
        raise DataError(f"catalog merge --keep-splits: {len(straddle)} patient(s) (linked by identical images across "
                        f"sources) lie in two splits, e.g. {shown}; leave out --keep-splits to split by patient")


def _order_columns(table: pd.DataFrame, vocabulary: Sequence[str]) -> pd.DataFrame:
    """image_id, path, patient_id, split, the labels, source, then metadata in first-met order."""
    first = [*REQUIRED_COLUMNS, *vocabulary, SOURCE]
    rest = [c for c in table.columns if c not in first]
    return table[first + rest]


def _split_info(table: pd.DataFrame, split: np.ndarray, groups: np.ndarray, ratios: tuple[float, ...], seed: int,
                method: str, labels: tuple[str, ...]) -> dict:
    codes = pd.Series(split).map({s: i for i, s in enumerate(SPLITS)}).to_numpy(dtype=np.int8)
    patients = table.assign(_s=split).groupby("_s")["patient_id"].nunique()
    per_source = {str(s): {name: int(((table[SOURCE] == s) & (split == name)).sum()) for name in SPLITS}
                  for s in dict.fromkeys(table[SOURCE])}
    return {"seed": int(seed), "ratios": list(ratios), "method": method,
            "images": {s: int((split == s).sum()) for s in SPLITS},
            "patients": {s: int(patients.get(s, 0)) for s in SPLITS},
            "images_per_source": per_source, "linked_groups": int(len(np.unique(groups))),
            "hash": _hash_codes(codes), "absent": absent_from_splits(table, labels)}
