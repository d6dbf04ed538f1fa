"""Patient-level train/val/test splitting: seeded, stable across machines, multi-label stratified over patients.

Method ("stratified-rarest-first"): patients are sorted by id and each gets one random key from
np.random.default_rng(seed); each patient joins the stratum of the rarest finding it has (normal patients form
their own stratum); within a stratum, patients in key order are dealt to the splits in proportion to the ratios
by cumulative image count (at least one patient per split when the stratum has enough patients). A repair pass
then moves single patients so that every finding with at least as many patients as there are splits appears in
every split. All steps are vectorised numpy: the full 112,120-row NIH table splits in well under 0.1 s.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from chestxray.data.catalog import SPLITS, Catalog
from chestxray.data.tasks import absent_from_splits
from chestxray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METHOD = "stratified-rarest-first"
CODES = {name: i for i, name in enumerate(SPLITS)}


TEST_ONLY = (0.0, 0.0, 1.0)  # a catalog for external validation: every image is test


def check_ratios(ratios: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """Validate train/val/test ratios and normalise them to sum to 1: three non-negative numbers, all three > 0
    for a catalog to train on (val picks checkpoints, early stopping and thresholds; test measures), or 0,0,1 for
    a test-only catalog (external validation of a trained model)."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or any(r < 0 for r in values) or not np.isfinite(values).all():
        raise ConfigError(f"split ratios must be three non-negative numbers train,val,test (got {ratios})")
    total = sum(values)
    if abs(total - 1.0) > 0.01:
        raise ConfigError(f"split ratios {ratios} sum to {total:g}; they must sum to 1 (e.g. 0.7,0.1,0.2)")
    if values[0] == 0 and values[1] == 0:
        return TEST_ONLY
    if min(values) <= 0:
        empty = [name for name, r in zip(("train", "val", "test"), values) if r <= 0]
        raise ConfigError(f"split ratios {ratios} leave {' and '.join(empty)} empty: a catalog to train on needs all "
                          "three (val picks checkpoints and thresholds, test measures), e.g. 0.7,0.1,0.2; a test-only "
                          "catalog for external validation is 0,0,1")
    return (values[0] / total, values[1] / total, values[2] / total)


def _patient_labels(codes: np.ndarray, labels: np.ndarray, n_patients: int) -> np.ndarray:
    """(P, L) bool: does patient p have finding l on any of its images."""
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    if labels.shape[1] == 0:
        return np.zeros((n_patients, 0), dtype=bool)
    return np.maximum.reduceat(labels[order], starts, axis=0).astype(bool)


def _deal(images: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Split per patient of one stratum (patients in random order, `images` each), balanced by image count.

    Each patient goes to the ratio interval holding the midpoint of its share of the stratum's cumulative images;
    when the stratum has enough patients, every split with ratio > 0 gets at least one.
    """
    cum = np.cumsum(images)
    mid = (cum - images / 2) / cum[-1]
    edges = np.cumsum(ratios)[:-1]
    part = np.searchsorted(edges, mid, side="right")
    active = np.flatnonzero(ratios > 0)
    part = active[np.clip(np.searchsorted(active, part), 0, len(active) - 1)] if len(active) < len(ratios) else part
    if len(images) >= len(active):
        centers = np.r_[0.0, edges] + ratios / 2
        for s in active:
            if (part == s).any():
                continue
            counts = np.bincount(part, minlength=len(ratios))
            movable = np.flatnonzero(counts[part] > 1)
            pick = movable[np.argmin(np.abs(mid[movable] - centers[s]))]
            part[pick] = s
    return part


def _repair(assign: np.ndarray, present: np.ndarray, keys: np.ndarray, ratios: np.ndarray) -> int:
    """Move single patients so each finding with >= n_active patients is in every active split; returns moves."""
    active = np.flatnonzero(ratios > 0)
    n_split = len(ratios)
    counts = np.stack([present[assign == s].sum(0) for s in range(n_split)])
    needed = present.sum(0) >= len(active)
    moves = 0
    for j in np.argsort(present.sum(0), kind="stable"):
        if not needed[j]:
            continue
        for s in active:
            if counts[s, j] > 0:
                continue
            donor = int(np.argmax(np.where(np.isin(np.arange(n_split), active), counts[:, j], -1)))
            candidates = np.flatnonzero((assign == donor) & present[:, j])
            for p in candidates[np.argsort(keys[candidates], kind="stable")]:
                has = present[p] & needed
                if np.all(counts[donor, has] >= 2):
                    assign[p] = s
                    counts[donor] -= present[p]
                    counts[s] += present[p]
                    moves += 1
                    break
    return moves


def _stratify(codes: np.ndarray, n_patients: int, labels: np.ndarray, ratios: np.ndarray, seed: int) -> np.ndarray:
    """Split index per row for dense patient codes (0..P-1 in sorted-id order); see the module docstring."""
    present = _patient_labels(codes, np.asarray(labels, dtype=np.uint8), n_patients)
    keys = np.random.default_rng(seed).random(n_patients)
    n_pos = present.sum(0)
    rank = np.argsort(np.argsort(n_pos, kind="stable"), kind="stable")
    stratum = np.full(n_patients, len(n_pos))  # normal patients: their own, last stratum
    if present.shape[1]:
        stratum = np.where(present, rank[None, :], len(n_pos)).min(1)
    order = np.lexsort((keys, stratum))
    assign = np.empty(n_patients, dtype=np.int8)
    bounds = np.flatnonzero(np.r_[True, np.diff(stratum[order]) != 0, True])
    images = np.bincount(codes, minlength=n_patients)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        assign[order[start:stop]] = _deal(images[order[start:stop]], ratios)
    moves = _repair(assign, present, keys, ratios)
    if moves:
        log.debug("split repair moved %d patient(s) so every finding is in every split", moves)
    return assign[codes]


def stratified_split(patient_ids: np.ndarray | pd.Series, labels: np.ndarray, ratios: tuple[float, ...],
                     seed: int = 0) -> np.ndarray:
    """Split index per row (0..len(ratios)-1) so that each patient's rows share one split; see module docstring."""
    codes, n_patients = patient_codes(patient_ids)
    return _stratify(codes, n_patients, labels, np.asarray(ratios, dtype=float), seed)


def patient_codes(patient_ids: np.ndarray | pd.Series) -> tuple[np.ndarray, int]:
    """Integer code per row numbering the patients in sorted-id order (machine independent), and their count."""
    codes, uniques = pd.factorize(pd.Series(patient_ids, copy=False).astype(str))
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[np.argsort(np.asarray(uniques).astype(str), kind="stable")] = np.arange(len(uniques))
    return rank[codes], len(uniques)


def split_hash(table: pd.DataFrame) -> str:
    """Fingerprint of the split column in row order (rows come in source order): equal hashes, identical splits."""
    return _hash_codes(table["split"].fillna("").astype(str).map(CODES).fillna(-1).to_numpy(dtype=np.int8))


def _hash_codes(split_codes: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(split_codes, dtype=np.int8).tobytes()).hexdigest()[:16]


def _leaked(codes: np.ndarray, n_patients: int, split_codes: np.ndarray) -> np.ndarray:
    """Codes of patients whose rows lie in more than one split."""
    low = np.full(n_patients, 127, dtype=np.int8)
    high = np.full(n_patients, -128, dtype=np.int8)
    np.minimum.at(low, codes, split_codes)
    np.maximum.at(high, codes, split_codes)
    return np.flatnonzero(low != high)


def _examples(patient_ids: pd.Series, codes: np.ndarray, which: np.ndarray) -> list[str]:
    """Up to five patient ids for the given patient codes."""
    first = pd.Series(np.arange(len(codes))).groupby(codes).first()
    return [str(patient_ids.iloc[first[c]]) for c in which[:5]]


def assign_splits(catalog: Catalog, ratios: tuple[float, ...] = (0.7, 0.1, 0.2), seed: int = 0, *,
                  keep_source: bool = True) -> Catalog:
    """Return a copy of the catalog with a patient-level split; seed, ratios and method go into info['split'].

    When the rows already carry a split from the source (official lists, train/test folders) and keep_source is
    True, it is kept: only val is carved out of train by patient (ratio val/(train+val)) if the source has no val.
    """
    ratios = check_ratios(ratios)
    table = catalog.table.copy(deep=False)
    patients = table["patient_id"].astype(str)
    codes, n_patients = patient_codes(patients)
    labels = catalog.label_matrix
    where = catalog.source or "catalog"
    info_split: dict = {"seed": int(seed), "ratios": list(ratios), "method": METHOD}
    raw = table["split"]
    if ratios == TEST_ONLY:  # external validation: every image is test, whatever split the source had
        split_codes = np.full(len(table), CODES["test"], dtype=np.int8)
        info_split["method"] = "test only (ratios 0,0,1: external validation)"
    elif keep_source and not raw.isin(["", None]).all():
        split_codes = _source_codes(raw.fillna("").astype(str), patients, codes, n_patients, where)
        if not (split_codes == 1).any() and ratios[1] > 0:
            train = np.flatnonzero(split_codes == 0)
            train_patients, dense = np.unique(codes[train], return_inverse=True)
            val_share = ratios[1] / (ratios[0] + ratios[1])
            part = _stratify(dense, len(train_patients), labels[train], np.array([1 - val_share, val_share]), seed)
            split_codes[train[part == 1]] = 1
            info_split["method"] = f"source split kept; val carved from train by patient ({METHOD})"
        else:
            info_split["method"] = "source split kept"
    else:
        split_codes = _stratify(codes, n_patients, labels, np.asarray(ratios), seed)
    leaked = _leaked(codes, n_patients, split_codes)
    if len(leaked):
        raise DataError(f"{where} split: {len(leaked)} patient(s) appear in more than one split, e.g. "
                        f"{_examples(patients, codes, leaked)}; splits must be by patient")
    table["split"] = np.asarray(SPLITS, dtype=object)[split_codes]
    per_patient = np.zeros(n_patients, dtype=np.int8)
    per_patient[codes] = split_codes
    images, people = np.bincount(split_codes, minlength=3), np.bincount(per_patient, minlength=3)
    info_split["images"] = {s: int(images[i]) for i, s in enumerate(SPLITS)}
    info_split["patients"] = {s: int(people[i]) for i, s in enumerate(SPLITS)}
    info_split["hash"] = _hash_codes(split_codes)
    info_split["absent"] = absent_from_splits(table, catalog.labels)
    for name, splits in info_split["absent"].items():
        log.warning("%s: %s %r has no image in %s (too few patients); its metrics there will be n/a — use more data, "
                    "other --ratios, or merge it with another", where, "class" if catalog.task == "multiclass"
                    else "label", name, "/".join(splits))
    return replace(catalog, table=table, info={**catalog.info, "split": info_split})


def _source_codes(raw: pd.Series, patients: pd.Series, codes: np.ndarray, n_patients: int, where: str) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) of a split given by the source, which must keep patients apart."""
    given = raw.str.strip().str.lower()
    split_codes = given.map(CODES).fillna(-1).to_numpy(dtype=np.int8)
    if (split_codes < 0).any():
        bad = sorted(set(given[split_codes < 0]))
        raise DataError(f"{where}: split column holds {bad}; every row needs one of {list(SPLITS)} "
                        "(or none at all, to split at random)")
    if not (split_codes == 0).any():
        raise DataError(f"{where}: the source split has no 'train' rows; rebuild without the source split")
    leaked = _leaked(codes, n_patients, split_codes)
    if len(leaked):
        raise DataError(f"{where}: {len(leaked)} patient(s) are in more than one of the source's splits, e.g. "
                        f"{_examples(patients, codes, leaked)}; ignore the source split (--ignore-source-split) "
                        "to split by patient")
    return split_codes
