"""Patient-level train/val/test splitting: seeded, stable across machines, multi-label stratified over patients.

Method ("stratified-rarest-first"): patients are sorted by id and each gets one random key from
np.random.default_rng(seed); each patient joins the stratum of the rarest finding it has (normal patients form
their own stratum); within a stratum, patients in key order are dealt to the splits in proportion to the ratios
by cumulative image count (at least one patient per split when the stratum has enough patients). A repair pass then moves single patients so that
every finding with at least as many patients as there are splits appears in every split. All steps are
vectorised numpy, so the full 112,120-row NIH table splits in tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from chestxray.catalog import SPLITS, Catalog
from chestxray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METHOD = "stratified-rarest-first"


def check_ratios(ratios: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """Validate train/val/test ratios (three non-negative numbers, train > 0) and normalise them to sum to 1."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or any(r < 0 for r in values) or values[0] <= 0 or not np.isfinite(values).all():
        raise ConfigError(f"split ratios must be three non-negative numbers train,val,test with train > 0 (got {ratios})")
    total = sum(values)
    if abs(total - 1.0) > 0.01:
        raise ConfigError(f"split ratios {ratios} sum to {total:g}; they must sum to 1 (e.g. 0.7,0.1,0.2)")
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


def stratified_split(patient_ids: np.ndarray | pd.Series, labels: np.ndarray, ratios: tuple[float, ...],
                     seed: int = 0) -> np.ndarray:
    """Split index per row (0..len(ratios)-1) so that each patient's rows share one split; see module docstring."""
    ratios_arr = np.asarray(ratios, dtype=float)
    codes, n_patients = patient_codes(patient_ids)
    present = _patient_labels(codes, np.asarray(labels, dtype=np.uint8), n_patients)
    keys = np.random.default_rng(seed).random(n_patients)
    n_pos = present.sum(0)
    rank = np.argsort(np.argsort(n_pos, kind="stable"), kind="stable")
    stratum = np.where(present, rank[None, :], len(n_pos)).min(1) if present.shape[1] else np.zeros(n_patients, int)
    order = np.lexsort((keys, stratum))
    assign = np.empty(n_patients, dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, np.diff(stratum[order]) != 0, True])
    images = np.bincount(codes, minlength=n_patients)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        assign[order[start:stop]] = _deal(images[order[start:stop]], ratios_arr)
    moves = _repair(assign, present, keys, ratios_arr)
    if moves:
        log.debug("split repair moved %d patient(s) so every finding is in every split", moves)
    return assign[codes]


def patient_codes(patient_ids: np.ndarray | pd.Series) -> tuple[np.ndarray, int]:
    """Integer code per row numbering the patients in sorted-id order (machine independent), and their count."""
    codes, uniques = pd.factorize(pd.Series(patient_ids, copy=False).astype(str))
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[np.argsort(np.asarray(uniques).astype(str), kind="stable")] = np.arange(len(uniques))
    return rank[codes], len(uniques)


def split_hash(table: pd.DataFrame) -> str:
    """Fingerprint of the split column in row order (rows come in source order): equal hashes, identical splits."""
    codes = pd.Categorical(table["split"], categories=[*SPLITS, ""]).codes.astype(np.int8)
    return hashlib.sha256(codes.tobytes()).hexdigest()[:16]


def check_no_overlap(patient_ids: np.ndarray | pd.Series, split: np.ndarray, where: str) -> None:
    """Raise a DataError when a patient has rows in more than one split (fast numpy check)."""
    codes, n_patients = patient_codes(patient_ids)
    split_codes = pd.factorize(pd.Series(split, copy=False))[0]
    low = np.full(n_patients, np.iinfo(np.int64).max)
    high = np.full(n_patients, -1)
    np.minimum.at(low, codes, split_codes)
    np.maximum.at(high, codes, split_codes)
    leaked = np.flatnonzero(low != high)
    if len(leaked):
        ids = pd.Series(np.asarray(patient_ids, dtype=object).astype(str)).groupby(codes).first()
        raise DataError(f"{where}: {len(leaked)} patient(s) appear in more than one split, e.g. "
                        f"{list(ids.iloc[leaked[:5]])}; splits must be by patient")


def assign_splits(catalog: Catalog, ratios: tuple[float, ...] = (0.7, 0.1, 0.2), seed: int = 0, *,
                  keep_source: bool = True) -> Catalog:
    """Return a copy of the catalog with a patient-level split; seed, ratios and method go into info['split'].

    When the rows already carry a split from the source (official lists, train/test folders) and keep_source is
    True, it is kept: only val is carved out of train by patient (ratio val/(train+val)) if the source has no val.
    """
    ratios = check_ratios(ratios)
    table = catalog.table.copy()
    given = table["split"].fillna("").astype(str)
    if (given != "").any():
        given = given.str.strip().str.lower()
    labels = catalog.label_matrix
    info_split: dict = {"seed": int(seed), "ratios": list(ratios), "method": METHOD}
    if keep_source and (given != "").any():
        _check_source_split(table, given, catalog.source)
        split = given.to_numpy(dtype=object).copy()
        if "val" not in set(given) and ratios[1] > 0:
            train = np.flatnonzero(given.to_numpy() == "train")
            val_share = ratios[1] / (ratios[0] + ratios[1])
            part = stratified_split(table["patient_id"].iloc[train], labels[train], (1 - val_share, val_share), seed)
            split[train[part == 1]] = "val"
            info_split["method"] = f"source split kept; val carved from train by patient ({METHOD})"
        else:
            info_split["method"] = "source split kept"
    else:
        part = stratified_split(table["patient_id"], labels, ratios, seed)
        split = np.asarray(SPLITS, dtype=object)[part]
    table["split"] = split
    check_no_overlap(table["patient_id"], split, f"{catalog.source or 'catalog'} split")
    counts = table["split"].value_counts()
    info_split["images"] = {s: int(counts.get(s, 0)) for s in SPLITS}
    info_split["patients"] = {s: int(table.loc[table["split"] == s, "patient_id"].nunique()) for s in SPLITS}
    info_split["hash"] = split_hash(table)
    return replace(catalog, table=table, info={**catalog.info, "split": info_split})


def _check_source_split(table: pd.DataFrame, given: pd.Series, source: str) -> None:
    """A source split must name train/val/test on every row and keep each patient in one split."""
    bad = sorted(set(given) - set(SPLITS))
    if bad:
        raise DataError(f"{source or 'catalog'}: split column holds {bad}; every row needs one of {list(SPLITS)} "
                        "(or none at all, to split at random)")
    if "train" not in set(given):
        raise DataError(f"{source or 'catalog'}: the source split has no 'train' rows; rebuild without the source split")
    per_patient = pd.Series(given.to_numpy()).groupby(table["patient_id"].to_numpy()).nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise DataError(f"{source or 'catalog'}: {len(leaked)} patient(s) are in more than one of the source's splits, "
                        f"e.g. {list(leaked.index[:5])}; ignore the source split (--ignore-source-split) to split by patient")
