"""Patient-level train/val/test splitting: seeded, stable across machines, and blind to the labels.

Method ("patient-hash"): every patient gets a key in [0, 1) from a hash of (seed, patient id); patients in key
order are dealt to the splits in proportion to the ratios by cumulative image count (each patient to the interval
holding the midpoint of its share of the images; at least one patient per split when there are enough). So which
split a patient lands in depends on its id, the seed, the ratios and how many images each patient has, never on the
labels: the binary (NORMAL / PNEUMONIA) and the multi-class (NORMAL / BACTERIA / VIRUS) catalog of one folder with
one seed put the same patients in the same split, and their models can be compared on the same test images. A
catalog with other patients moves only patients near the ratio boundaries. Labels are not stratified: with
hundreds of patients per finding the prevalence differs between splits by chance only (a finding missing from a
split is warned about and recorded in info['split']['absent']); for small collections use k-fold
cross-validation (`chestxray study --folds K`). Vectorised apart from one hash per patient: the full
112,120-row NIH table (30,805 patients) splits in about 0.1 s.
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

METHOD = "patient-hash"
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


def patient_keys(patient_ids: np.ndarray | pd.Series, seed: int, salt: str = "") -> np.ndarray:
    """Uniform [0, 1) key per patient id from a hash of (seed, salt, id): the same on any machine and in any catalog
    that holds the patient, whatever its labels (`salt` draws other keys from the same seed, e.g. for folds)."""
    prefix = f"chestxray-split/{int(seed)}/{salt}/".encode() if salt else f"chestxray-split/{int(seed)}/".encode()
    return np.array([int.from_bytes(hashlib.blake2b(prefix + str(p).encode("utf-8", "surrogatepass"),
                                                    digest_size=8).digest(), "big") / 2.0 ** 64
                     for p in patient_ids], dtype=float)


def _deal(images: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Split per patient (patients in key order, `images` each), balanced by image count.

    Each patient goes to the ratio interval holding the midpoint of its share of the cumulative images; when there
    are enough patients, every split with ratio > 0 gets at least one.
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


def _split_codes(codes: np.ndarray, n_patients: int, ids: np.ndarray, ratios: np.ndarray, seed: int,
                 salt: str = "") -> np.ndarray:
    """Split index per row for dense patient codes 0..P-1 whose ids are `ids` (see the module docstring)."""
    keys = patient_keys(ids, seed, salt)
    order = np.lexsort((ids, keys))  # ties (never seen) broken by id, so the order is total
    images = np.bincount(codes, minlength=n_patients)
    assign = np.empty(n_patients, dtype=np.int8)
    assign[order] = _deal(images[order], ratios)
    return assign[codes]


def patient_split(patient_ids: np.ndarray | pd.Series, ratios: tuple[float, ...], seed: int = 0,
                  salt: str = "") -> np.ndarray:
    """Split index per row (0..len(ratios)-1): each patient's rows share one split, chosen from the patient ids,
    their image counts and the seed only (labels play no part); see the module docstring. Any number of parts
    (k-fold uses K equal ratios); `salt` gives other keys for the same seed."""
    codes, ids = _dense(patient_ids)
    return _split_codes(codes, len(ids), ids, np.asarray(ratios, dtype=float), seed, salt)


def stratified_split(patient_ids: np.ndarray | pd.Series, labels: np.ndarray, ratios: tuple[float, ...],
                     seed: int = 0) -> np.ndarray:
    """The former name of `patient_split`, kept for its callers: `labels` no longer decide where a patient goes
    (the binary and the multi-class catalog of one folder must split alike)."""
    del labels
    return patient_split(patient_ids, ratios, seed)


def _dense(patient_ids: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Dense code per row (patients numbered in sorted-id order, machine independent) and the ids in that order."""
    codes, uniques = pd.factorize(pd.Series(patient_ids, copy=False).astype(str))
    ids = np.asarray(uniques).astype(str)
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank[codes], ids[order]


def patient_codes(patient_ids: np.ndarray | pd.Series) -> tuple[np.ndarray, int]:
    """Integer code per row numbering the patients in sorted-id order (machine independent), and their count."""
    codes, ids = _dense(patient_ids)
    return codes, len(ids)


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
    codes, ids = _dense(patients)
    n_patients = len(ids)
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
            part = _split_codes(dense, len(train_patients), ids[train_patients], np.array([1 - val_share, val_share]),
                                seed)
            split_codes[train[part == 1]] = 1
            info_split["method"] = f"source split kept; val carved from train by patient ({METHOD})"
        else:
            info_split["method"] = "source split kept"
    else:
        split_codes = _split_codes(codes, n_patients, ids, np.asarray(ratios), seed).astype(np.int8)
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
