"""One-time preprocessing: decode every catalog image in parallel, resize once, write per-split tar shards.

Output folder PREPARED: <split>-NNNNNN.tar shards (format in chestxray.data.shards), manifest.json and quarantine.csv
(path, image_id, reason for every input that could not be used). Re-running is cheap and safe:
- a fingerprint of the catalog rows, each file's size and mtime and the settings decides whether work is needed;
- the same fingerprint: finished shards (recorded in .prepare-state.json after their atomic rename) are kept;
- a different fingerprint: the old shards are deleted and everything is rebuilt (logged as a warning);
- shards are written through a temporary name, so an interrupted run (even kill -9) never leaves a
  complete-looking shard, and manifest.json (the "done" marker) is written last; it records every shard's size and
  sha256, which train, evaluate and `chestxray verify` check (chestxray.data.verify);
- one writer at a time: the folder is locked (chestxray.locks) while prepare runs;
- images above `max_pixels` (from the file header, before decoding) are quarantined, as are files whose decoder
  crashes its process (chestxray.data.pool).
Train rows are stored in a seeded random order (seed 0) so every shard is a mix of all labels; val/test keep
catalog order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data.catalog import SPLITS, Catalog, load_catalog, validate_catalog
from chestxray.data.imaging import DEFAULT_MAX_PIXELS, RESIZE_MODES
from chestxray.data.manifest import check_manifest, seal
from chestxray.data.pool import Decoded, DecodePool, drain
from chestxray.data.sampling import ALPHABET, encode_sources
from chestxray.data.shards import (
    FORMAT,
    MANIFEST,
    QUARANTINE,
    ShardSample,
    sample_key,
    shard_name,
    write_shard,
)
from chestxray.errors import ConfigError, DataError, DiskFullError
from chestxray.files import (  # noqa: F401 (KILL_ENV: tests)
    KILL_ENV,
    atomic_open,
    disk_full,
    disk_full_message,
    kill_point,
    read_csv,
    write_csv,
    write_json,
)
from chestxray.locks import folder_lock

log = logging.getLogger(__name__)

STATE = ".prepare-state.json"
TRAIN_ORDER_SEED = 0
CHUNK = 16  # images per worker task: big enough to hide inter-process overhead, small for a smooth progress bar
_SHARD_RE = re.compile(r"^(train|val|test)-\d{6}\.tar$")
Progress = Callable[[int, int], None]  # (images just finished, total images to process this run)


@dataclass
class PrepareResult:
    """What prepare_dataset did: counts per split, quarantined inputs, timing and reuse."""

    out_dir: Path
    manifest: dict[str, Any]
    counts: dict[str, int]
    quarantined: int
    seconds: float
    processed: int
    reused_shards: int = 0
    written_shards: int = 0
    up_to_date: bool = False
    rebuilt: bool = False
    crashed: int = 0
    quarantine: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "image_id", "reason"]))

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: images per split, quarantined, seconds, images/s."""
        splits = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        state = (" (up to date, nothing to do)" if self.up_to_date else
                 " (rebuilt: catalog, files or settings changed)" if self.rebuilt else
                 f" (resumed: {self.reused_shards} finished shard(s) kept)" if self.reused_shards else "")
        crashed = f" (decoder crashed on {self.crashed})" if self.crashed else ""
        return (f"prepared {splits}; quarantined {self.quarantined}{crashed}; {self.seconds:.1f} s, "
                f"{self.images_per_s:.0f} images/s{state} → {self.out_dir}")


@dataclass
class _Shard:
    split: str
    index: int
    rows: pd.DataFrame  # image_id, path, patient_id, label columns, _pos

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def prepare_dataset(catalog: Catalog | str | Path, out_dir: str | Path, size: int = 256, resize: str = "stretch",
                    workers: int | None = None, shard_size: int = 1000, progress: Progress | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PrepareResult:
    """Decode, resize (fit_square `resize`) and shard every catalog image into out_dir; see the module doc.

    workers: processes (default os.cpu_count(); 0 or 1 decodes in this process). max_pixels: larger images are
    quarantined (None: no limit). Raises DataError when no image at all can be used (quarantine.csv is still
    written), ConfigError when another process is preparing into out_dir.
    """
    with folder_lock(out_dir, "prepare"):
        return _prepare(catalog, Path(out_dir), size, resize, workers, shard_size, progress, max_pixels)


def _prepare(catalog: Catalog | str | Path, out: Path, size: int, resize: str, workers: int | None,
             shard_size: int, progress: Progress | None, max_pixels: int | None) -> PrepareResult:
    start = time.perf_counter()
    catalog_path = ""
    if not isinstance(catalog, Catalog):
        catalog_path = str(Path(catalog).resolve())
        catalog = load_catalog(catalog)
    _check_settings(size, resize, shard_size, max_pixels)
    validate_catalog(catalog)
    table = catalog.table
    unassigned = ~table["split"].isin(SPLITS)
    if unassigned.any():
        example = table["image_id"][unassigned].iloc[0]
        raise DataError(f"catalog: {int(unassigned.sum())} row(s) have no split (e.g. {example!r});"
                        " assign splits first (chestxray.data.split.assign_splits)")
    labels = list(catalog.labels)
    sources = _source_names(table)
    settings = {"image_size": size, "resize": resize, "shard_size": shard_size, "storage": "raw uint8 .gray",
                "train_order_seed": TRAIN_ORDER_SEED, "interpolation": "area when shrinking, bilinear when enlarging",
                "max_pixels": max_pixels}
    fingerprint = _fingerprint(table, labels, catalog.task, settings)
    out.mkdir(parents=True, exist_ok=True)
    _remove_temp_files(out)

    existing = _read_json(out / MANIFEST)
    if existing and existing.get("fingerprint") == fingerprint and _sealed(existing) and _shards_present(out, existing):
        quarantine = _read_quarantine(out)
        counts = {s: v["count"] for s, v in existing["splits"].items()}
        if sum(counts.values()) == 0:
            raise DataError(f"{out}: none of the catalog images could be used; see {out / QUARANTINE}")
        return PrepareResult(out, existing, counts, len(quarantine), time.perf_counter() - start, 0,
                             reused_shards=sum(len(v["shards"]) for v in existing["splits"].values()),
                             up_to_date=True, quarantine=quarantine)
    state = _read_json(out / STATE) or {}
    previous = (existing or {}).get("fingerprint") or state.get("fingerprint")
    rebuilt = bool(previous and previous != fingerprint)
    if rebuilt or state.get("fingerprint") != fingerprint:
        if rebuilt:
            log.warning("%s: catalog, files or settings changed since the last prepare (fingerprint %s → %s); "
                        "rebuilding all shards", out, previous[:12], fingerprint[:12])
        _remove_outputs(out)
        state = {"fingerprint": fingerprint, "done": {}}
    (out / MANIFEST).unlink(missing_ok=True)
    write_json(out / STATE, state)

    plan = _plan(table, labels, shard_size)
    done: dict[str, Any] = {name: rec for name, rec in state["done"].items()
                            if "sha256" in rec and "annotated" in rec and (out / name).is_file()
                            and (out / name).stat().st_size == rec["bytes"]}
    state["done"] = done
    todo = [shard for shard in plan if shard.name not in done]
    total = int(sum(len(s.rows) for s in todo))
    try:
        crashed = _run(todo, out, size, resize, labels, sources, workers, state, progress, total, max_pixels)
        manifest, counts, quarantine = _finish(out, plan, state, catalog, labels, sources, settings, fingerprint,
                                               catalog_path)
    except Exception as exc:
        if disk_full(exc) is None:
            raise
        kept = len((_read_json(out / STATE) or {}).get("done", {}))
        raise DiskFullError(disk_full_message(out, exc, f"kept {kept} of {len(plan)} shard(s), finished and checked "
                                              f"({STATE}); free some space, then run the same command again: it "
                                              "goes on from them")) from None
    seconds = time.perf_counter() - start
    result = PrepareResult(out, manifest, counts, len(quarantine), seconds, total, reused_shards=len(plan) - len(todo),
                           written_shards=len(todo), rebuilt=rebuilt, crashed=crashed, quarantine=quarantine)
    if sum(counts.values()) == 0:
        raise DataError(f"{out}: none of the {len(table)} catalog images could be used; see {out / QUARANTINE} "
                        "for the reason of each")
    if len(quarantine):
        log.warning("%d of %d images quarantined (listed in %s)", len(quarantine), len(table), out / QUARANTINE)
    return result


def _check_settings(size: int, resize: str, shard_size: int, max_pixels: int | None) -> None:
    if resize not in RESIZE_MODES:
        raise ConfigError(f"--resize {resize!r} is not one of {RESIZE_MODES}")
    if not 8 <= int(size) <= 4096:
        raise ConfigError(f"--size {size} must be between 8 and 4096 pixels")
    if shard_size < 1:
        raise ConfigError(f"--shard-size {shard_size} must be at least 1")
    if max_pixels is not None and max_pixels < 1:
        raise ConfigError(f"--max-pixels {max_pixels} must be at least 1")


def _fingerprint(table: pd.DataFrame, labels: list[str], task: str, settings: dict[str, Any]) -> str:
    """sha256 of the settings, label schema, catalog rows (their source too) and each file's size + mtime."""
    stats = [_stat(p) for p in table["path"]]
    frame = table[["image_id", "path", "patient_id", "split", *labels, *(["source"] if "source" in table else [])]
                  ].astype(str)
    frame["_size"] = [s[0] for s in stats]
    frame["_mtime"] = [s[1] for s in stats]
    digest = hashlib.sha256(repr((FORMAT, labels, task, sorted(settings.items()))).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _plan(table: pd.DataFrame, labels: list[str], shard_size: int) -> list[_Shard]:
    """Cut each split into shards of shard_size rows (train rows in seeded random order)."""
    plan = []
    for split in SPLITS:
        columns = ["image_id", "path", "patient_id", *labels, *(["source"] if "source" in table else [])]
        rows = table.loc[table["split"] == split, columns]
        if split == "train":
            rows = rows.iloc[np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(rows))]
        rows = rows.reset_index(drop=True)
        rows["_pos"] = np.arange(len(rows))
        for index, begin in enumerate(range(0, len(rows), shard_size)):
            plan.append(_Shard(split, index, rows.iloc[begin:begin + shard_size]))
    return plan


def _run(todo: list[_Shard], out: Path, size: int, resize: str, labels: list[str], sources: list[str],
         workers: int | None, state: dict[str, Any], progress: Progress | None, total: int,
         max_pixels: int | None) -> int:
    """Decode the pending shards' images (in a process pool when workers > 1) and stream each shard to disk in
    order as its chunks arrive (memory stays at a few chunks, whatever the shard size). Returns how many files
    crashed their decoder process."""
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    tasks = deque(shard.rows["path"].iloc[begin:begin + CHUNK].tolist()
                  for shard in todo for begin in range(0, len(shard.rows), CHUNK))
    pool = DecodePool(workers if tasks else 0, size, resize, max_pixels)
    window = max(2, 4 * workers)

    def next_chunk() -> list[Decoded]:
        chunk = drain(pool, tasks, window, (lambda n: progress(n, total)) if progress else None)
        kill_point("decode")
        return chunk

    try:
        for shard in todo:
            state["done"][shard.name] = _write(out, shard, next_chunk, size, labels, sources)
            kill_point("shard-done")
            write_json(out / STATE, state)
    finally:
        pool.close()
    return pool.crashed


def _write(out: Path, shard: _Shard, next_chunk: Callable[[], list[Decoded]], size: int,
           labels: list[str], sources: list[str]) -> dict[str, Any]:
    """Write one shard from its decoded chunks; returns its record (count, positives and annotated images per label,
    the same per source with each kept sample's source code, quarantine, bytes, sha256)."""
    rows = shard.rows
    values = rows[labels].to_numpy(dtype=np.float64)
    given = ~np.isnan(values)  # False: the label is missing for that image (a merged catalog)
    label_values = np.where(given, values, 0).astype(np.uint8)
    # plain lists once per shard: per-image pandas lookups would cost more than writing the sample
    paths, image_ids, patient_ids = (rows[c].astype(str).tolist() for c in ("path", "image_id", "patient_id"))
    row_sources = rows["source"].astype(str).tolist() if sources else [""] * len(rows)
    positions = rows["_pos"].tolist()
    good: list[int] = []
    quarantine: list[list[str]] = []

    def samples():
        for begin in range(0, len(rows), CHUNK):
            for i, (data, reason) in enumerate(next_chunk(), start=begin):
                if data is None:
                    quarantine.append([paths[i], image_ids[i], reason])
                    continue
                good.append(i)
                if len(good) == 2:
                    kill_point("shard-write")
                pixels = np.frombuffer(data, np.uint8).reshape(size, size)
                stored = [int(v) if g else None for v, g in zip(label_values[i].tolist(), given[i].tolist())]
                yield ShardSample(sample_key(int(positions[i])), pixels, image_ids[i], patient_ids[i], stored,
                                  row_sources[i])

    count = write_shard(out / shard.name, samples())
    with open(out / shard.name, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    record = {"split": shard.split, "count": count, **_tally(label_values[good], given[good]),
              "quarantine": quarantine, "bytes": (out / shard.name).stat().st_size, "sha256": digest}
    if sources:
        codes = [sources.index(row_sources[i]) for i in good]
        record["source_codes"] = encode_sources(codes)
        record["by_source"] = {name: {"count": int(sum(c == k for c in codes)),
                                      **_tally(label_values[good][np.asarray(codes, int) == k],
                                               given[good][np.asarray(codes, int) == k])}
                               for k, name in enumerate(sources)}
    return record


def _tally(values: np.ndarray, given: np.ndarray) -> dict[str, list[int]]:
    """Positives and annotated images per label of some samples (values 0/1, given False where missing)."""
    n_labels = values.shape[1] if values.ndim == 2 else 0
    if not len(values):
        return {"positives": [0] * n_labels, "annotated": [0] * n_labels}
    return {"positives": (values * given).sum(axis=0).astype(int).tolist(),
            "annotated": given.sum(axis=0).astype(int).tolist()}


def _source_names(table: pd.DataFrame) -> list[str]:
    """The sources of a catalog with a 'source' column holding two or more names (sorted), else []."""
    if "source" not in table:
        return []
    names = sorted(set(table["source"].fillna("").astype(str)))
    if len(names) < 2:
        return []
    if "" in names:
        raise DataError(f"catalog: {int((table['source'].fillna('') == '').sum())} row(s) have an empty source; "
                        "every row of a multi-source catalog needs one (rebuild it with 'chestxray catalog merge')")
    if len(names) > len(ALPHABET):
        raise DataError(f"catalog: {len(names)} sources; prepare keeps at most {len(ALPHABET)} in one dataset")
    return names


def _add(total: list[int], part: list[int]) -> list[int]:
    return [a + b for a, b in zip(total, part)]


def _finish(out: Path, plan: list[_Shard], state: dict[str, Any], catalog: Catalog, labels: list[str],
            sources: list[str], settings: dict[str, Any], fingerprint: str, catalog_path: str
            ) -> tuple[dict[str, Any], dict[str, int], pd.DataFrame]:
    """Write quarantine.csv and then manifest.json (last: its presence means the folder is complete)."""
    splits: dict[str, Any] = {}
    quarantine_rows: list[list[str]] = []
    zeros = [0] * len(labels)
    for shard in plan:
        rec = state["done"][shard.name]
        entry = splits.setdefault(shard.split, {"count": 0, "shards": [], "shard_counts": [], "shard_bytes": [],
                                                "shard_sha256": [], "positives": zeros, "annotated": zeros})
        if sources and "sources" not in entry:
            entry["sources"] = {"names": sources, "count": [0] * len(sources), "positives": [zeros] * len(sources),
                                "annotated": [zeros] * len(sources), "shard_codes": []}
        quarantine_rows.extend(rec["quarantine"])
        if rec["count"] == 0:
            (out / shard.name).unlink(missing_ok=True)
            continue
        entry["count"] += rec["count"]
        entry["shards"].append(shard.name)
        entry["shard_counts"].append(rec["count"])
        entry["shard_bytes"].append(rec["bytes"])
        entry["shard_sha256"].append(rec["sha256"])
        entry["positives"] = _add(entry["positives"], rec["positives"])
        entry["annotated"] = _add(entry["annotated"], rec["annotated"])
        if sources:
            block = entry["sources"]
            block["shard_codes"].append(rec["source_codes"])
            for k, name in enumerate(sources):
                part = rec["by_source"][name]
                block["count"][k] += part["count"]
                block["positives"][k] = _add(block["positives"][k], part["positives"])
                block["annotated"][k] = _add(block["annotated"][k], part["annotated"])
    quarantine = pd.DataFrame(quarantine_rows, columns=["path", "image_id", "reason"])
    write_csv(out / QUARANTINE, quarantine)
    manifest = {"format": FORMAT, "labels": labels, "task": catalog.task, "image_size": settings["image_size"],
                "resize": settings["resize"], "splits": splits, "fingerprint": fingerprint, "settings": settings,
                "catalog": catalog_path or str(catalog.info.get("path", "")), "source": catalog.source,
                "missing_labels": bool(any(e["annotated"] != [e["count"]] * len(labels) for e in splits.values())),
                "quarantined": len(quarantine), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if sources:
        manifest["sources"] = sources
    manifest = seal(manifest)
    with atomic_open(out / MANIFEST, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2) + "\n")
        fh.flush()
        kill_point("manifest")
    return manifest, {s: v["count"] for s, v in splits.items()}, quarantine


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable (then the work is redone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_quarantine(out: Path) -> pd.DataFrame:
    try:
        return read_csv(out / QUARANTINE, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["path", "image_id", "reason"])


def _sealed(manifest: dict[str, Any]) -> bool:
    """True when the manifest passes check_manifest (else its shards are re-checked and it is written again)."""
    try:
        check_manifest(manifest, MANIFEST)
    except DataError:
        return False
    return True


def _shards_present(out: Path, manifest: dict[str, Any]) -> bool:
    """Every shard the manifest lists is there with its recorded size (a cheap check; damage → rebuild it)."""
    for entry in manifest.get("splits", {}).values():
        sizes = entry.get("shard_bytes") or [None] * len(entry.get("shards", []))
        for name, size in zip(entry.get("shards", []), sizes):
            path = out / name
            if not path.is_file() or (size is not None and path.stat().st_size != size):
                return False
    return True


def _remove_temp_files(out: Path) -> None:
    """Delete temporary files left by an interrupted run (atomic writes use .<name>.*.tmp)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _remove_outputs(out: Path) -> None:
    """Delete shards, manifest and quarantine of an earlier, different prepare in the same folder."""
    for path in out.iterdir():
        if _SHARD_RE.match(path.name) or path.name in (MANIFEST, QUARANTINE, STATE):
            path.unlink(missing_ok=True)
