"""k-fold cross-validation by patient: one PREPARED folder per fold, made from an existing PREPARED folder.

Rule: every image of every split of the source folder takes part. Patients are dealt to K folds by the split rule
of chestxray.data.split (a key per patient from a hash of (seed, id), patients in key order dealt by cumulative image
count): grouped like scikit-learn's GroupKFold (a patient's images stay in one fold), balanced by images,
deterministic by seed and blind to the labels. Fold i's folder holds fold i as its test split; validation (which
picks checkpoints, early stopping and thresholds) is carved from the other K-1 folds by patient in the source's own
val : (train + val) proportion (1/8 when the source has no val), with a key drawn per fold; the rest is train.
So each model is tested on patients it never saw, and every patient is tested exactly once across the K folds.

The pixels are copied, not decoded again: shards hold final-size uint8 images, which are read once into memory
(k-fold is meant for small collections; a source above MAX_BYTES of pixels is refused) and written per fold (train
in a seeded random order, val/test in source order). A fold folder is written shards first, manifest last, and is
reused when its manifest names the same source fingerprint, K, seed and fold.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data.catalog import SPLITS
from chestxray.data.manifest import seal
from chestxray.data.shards import (
    MANIFEST,
    ShardSample,
    iter_split_samples,
    read_manifest,
    sample_key,
    shard_name,
    write_shard,
)
from chestxray.data.split import patient_split
from chestxray.errors import ConfigError, DataError
from chestxray.files import write_csv, write_json
from chestxray.locks import folder_lock

log = logging.getLogger(__name__)

MAX_BYTES = 4 << 30  # pixels held in memory while the folds are written
FOLDS_CSV = "folds.csv"
DEFAULT_VAL_SHARE = 0.125


@dataclass(frozen=True)
class FoldPlan:
    """Where each image goes: one row an image (image_id, patient_id, fold) plus, per fold, its split there."""

    table: pd.DataFrame  # image_id, patient_id, fold, split_fold0 .. split_fold{K-1}
    k: int
    seed: int
    val_share: float


def check_folds(k: int) -> int:
    """K must be a whole number from 2 (a ConfigError naming --folds otherwise)."""
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ConfigError(f"--folds {k}: k-fold cross-validation needs at least 2 folds (5 or 10 are usual)")
    return int(k)


def plan_folds(image_ids: pd.Series, patient_ids: pd.Series, k: int, seed: int = 0,
               val_share: float = DEFAULT_VAL_SHARE) -> FoldPlan:
    """Fold per image (by patient, balanced by images, seeded, label-blind) and each fold's train/val/test."""
    k = check_folds(k)
    patients = pd.Series(patient_ids, copy=False).astype(str).reset_index(drop=True)
    n_patients = patients.nunique()
    if n_patients < k:
        raise DataError(f"{n_patients} patient(s) cannot fill {k} folds; use fewer --folds")
    fold = patient_split(patients.to_numpy(), (1.0 / k,) * k, seed, salt="folds")
    table = pd.DataFrame({"image_id": pd.Series(image_ids, copy=False).astype(str).to_numpy(),
                          "patient_id": patients.to_numpy(), "fold": fold.astype(int)})
    for i in range(k):
        split = np.full(len(table), "test", dtype=object)
        rest = np.flatnonzero(fold != i)
        carve = patient_split(patients.to_numpy()[rest], (1 - val_share, val_share), seed, salt=f"fold{i}-val")
        split[rest] = np.where(carve == 1, "val", "train")
        table[f"split_fold{i}"] = split
    return FoldPlan(table, k, int(seed), float(val_share))


def _val_share(manifest: dict[str, Any]) -> float:
    """The source's val / (train + val) by images (DEFAULT_VAL_SHARE without a val split)."""
    counts = {s: int(manifest["splits"].get(s, {}).get("count", 0)) for s in SPLITS}
    if counts["val"] == 0 or counts["train"] == 0:
        return DEFAULT_VAL_SHARE
    return counts["val"] / (counts["train"] + counts["val"])


def fold_fingerprint(manifest: dict[str, Any], k: int, seed: int, fold: int) -> str:
    """Fingerprint of one fold's data: the source's fingerprint, K, seed and the fold number."""
    text = f"{manifest.get('fingerprint', '')}|folds={k}|seed={seed}|fold={fold}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fold_folders(root: str | Path, k: int) -> list[Path]:
    """The K fold folders under root: root/fold0 .. root/fold{K-1}."""
    return [Path(root) / f"fold{i}" for i in range(check_folds(k))]


def _current(folder: Path, fingerprint: str) -> bool:
    """True when folder holds a finished fold with this fingerprint (its manifest is written last)."""
    try:
        return read_manifest(folder).get("fingerprint") == fingerprint
    except DataError:
        return False


def make_folds(prepared: str | Path, root: str | Path, k: int, seed: int = 0) -> list[Path]:
    """Write root/fold{i} (a PREPARED folder each) and root/folds.csv; returns the fold folders (see module doc)."""
    k = check_folds(k)
    manifest = read_manifest(prepared)
    folders = fold_folders(root, k)
    prints = [fold_fingerprint(manifest, k, seed, i) for i in range(k)]
    if all(_current(f, p) for f, p in zip(folders, prints)) and (Path(root) / FOLDS_CSV).is_file():
        log.info("folds in %s are up to date", root)
        return folders
    with folder_lock(root, "study --folds"):
        samples = _read_all(prepared, manifest)
        plan = plan_folds(pd.Series([s["image_id"] for s in samples]), pd.Series([s["patient_id"] for s in samples]),
                          k, seed, _val_share(manifest))
        write_csv(Path(root) / FOLDS_CSV, plan.table)
        for i, (folder, fingerprint) in enumerate(zip(folders, prints)):
            if _current(folder, fingerprint):
                continue
            _write_fold(folder, samples, plan.table[f"split_fold{i}"].to_numpy(), manifest, prepared, plan, i,
                        fingerprint)
    sizes = plan.table.groupby("fold")["image_id"].count().tolist()
    log.info("wrote %d folds of %s images (seed %d) into %s", k, "/".join(map(str, sizes)), seed, root)
    return folders


def _read_all(prepared: str | Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample of every split of the source, in split order then stored order (pixels in memory)."""
    size = int(manifest["image_size"])
    total = sum(int(e["count"]) for e in manifest["splits"].values()) * size * size
    if total > MAX_BYTES:
        raise ConfigError(f"{prepared}: {total / 2**30:.1f} GiB of pixels; k-fold cross-validation holds them in "
                          f"memory while it writes the folds (at most {MAX_BYTES / 2**30:.0f} GiB) and is meant for "
                          "small collections: prepare at a smaller --size, or use the catalog's train/val/test split")
    samples = [s for split in SPLITS if split in manifest["splits"] for s in iter_split_samples(prepared, split,
                                                                                                 manifest)]
    ids = pd.Series([s["image_id"] for s in samples])
    if ids.duplicated().any():
        raise DataError(f"{prepared}: image {ids[ids.duplicated()].iloc[0]!r} is stored twice; re-run prepare")
    return samples


def _tally(samples: list[dict[str, Any]], rows: np.ndarray, n_labels: int) -> dict[str, list[int]]:
    """Positives and annotated images per label of some samples (a missing label is neither)."""
    if not len(rows):
        return {"positives": [0] * n_labels, "annotated": [0] * n_labels}
    given = np.stack([samples[r]["annotated"] for r in rows])
    values = np.stack([samples[r]["labels"] for r in rows])
    return {"positives": (values * given).sum(0).astype(int).tolist(), "annotated": given.sum(0).astype(int).tolist()}


def _write_fold(folder: Path, samples: list[dict[str, Any]], split: np.ndarray, manifest: dict[str, Any],
                prepared: str | Path, plan: FoldPlan, fold: int, fingerprint: str) -> None:
    """One fold's shards (train shuffled with a generator seeded by (seed, fold)) and then its manifest, with the
    same per-split records prepare writes (positives, annotated and, for several sources, the per-source block)."""
    from chestxray.data.sampling import encode_sources

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # a fold being rewritten is not a finished fold meanwhile
    for old in folder.glob("*.tar"):
        old.unlink()
    shard_size = int(manifest.get("settings", {}).get("shard_size", 1000)) or 1000
    n_labels = len(manifest["labels"])
    sources = list(manifest.get("sources") or [])
    splits: dict[str, Any] = {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        if not len(rows):
            continue
        if name == "train":
            rows = rows[np.random.default_rng([plan.seed, fold]).permutation(len(rows))]
        entry: dict[str, Any] = {"count": int(len(rows)), "shards": [], "shard_counts": [], "shard_bytes": [],
                                 "shard_sha256": [], **_tally(samples, rows, n_labels)}
        codes = np.array([sources.index(samples[r]["source"]) for r in rows], int) if sources else None
        for index, start in enumerate(range(0, len(rows), shard_size)):
            chunk = rows[start:start + shard_size]
            path = folder / shard_name(name, index)
            write_shard(path, (ShardSample(sample_key(start + j), samples[r]["image"], samples[r]["image_id"],
                                           samples[r]["patient_id"],
                                           [int(v) if g else None for v, g in zip(samples[r]["labels"].tolist(),
                                                                                  samples[r]["annotated"].tolist())],
                                           samples[r]["source"] if sources else "")
                               for j, r in enumerate(chunk)))
            entry["shards"].append(path.name)
            entry["shard_counts"].append(len(chunk))
            entry["shard_bytes"].append(path.stat().st_size)
            entry["shard_sha256"].append(hashlib.sha256(path.read_bytes()).hexdigest())
        if codes is not None:
            parts = [rows[codes == k] for k in range(len(sources))]
            entry["sources"] = {"names": sources, "count": [int(len(p)) for p in parts],
                                "positives": [_tally(samples, p, n_labels)["positives"] for p in parts],
                                "annotated": [_tally(samples, p, n_labels)["annotated"] for p in parts],
                                "shard_codes": [encode_sources(codes[i:i + shard_size])
                                                for i in range(0, len(rows), shard_size)]}
        splits[name] = entry
    if "train" not in splits or "test" not in splits:
        raise DataError(f"fold {fold}: no train or no test images; use fewer --folds")
    keep = {k: v for k, v in manifest.items() if k not in ("splits", "fingerprint", "manifest_sha256", "created")}
    body = {**keep, "splits": splits, "fingerprint": fingerprint,
            "folds": {"k": plan.k, "fold": fold, "seed": plan.seed, "val_share": plan.val_share,
                      "source": str(prepared), "source_fingerprint": manifest.get("fingerprint")}}
    write_json(folder / MANIFEST, seal(body))
