"""The prepared-shard format: plain POSIX tar files in WebDataset layout, plus manifest.json.

Each sample is two consecutive members with the same key (an 8-digit position within its split):
  <key>.json  {"image_id", "patient_id", "labels": [0/1 per label, schema order]}
  <key>.gray  raw uint8 pixels, image_size × image_size, row-major (no header, no compression)
Raw pixels instead of PNG: reading them per epoch costs a memcpy instead of a ~1 ms PNG decode per image, which
is what keeps the training loader cheap; at 256 px a sample is 64 KiB, so disk use stays modest. Because the
shards are plain tar, any WebDataset reader (and URLs such as pipe:…, s3://…, https://…) can stream them
sequentially.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.errors import DataError
from chestxray.files import atomic_path

FORMAT = "chestxray-prepared/1"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.csv"
IMAGE_EXT, META_EXT = "gray", "json"


@dataclass
class ShardSample:
    """One prepared sample: pixels uint8 (S, S) plus its identity and labels."""

    key: str
    image: np.ndarray
    image_id: str
    patient_id: str
    labels: list[int]


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`, e.g. train-000003.tar."""
    return f"{split}-{index:06d}.tar"


def sample_key(position: int) -> str:
    """Tar key of the sample at `position` within its split (dot-free, as WebDataset requires)."""
    return f"{position:08d}"


def write_shard(path: str | Path, samples: Iterable[ShardSample]) -> int:
    """Write samples to a tar shard through a temporary name (a crash never leaves a complete-looking shard)."""
    count = 0
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            meta = json.dumps({"image_id": s.image_id, "patient_id": s.patient_id,
                               "labels": [int(v) for v in s.labels]}).encode("utf-8")
            _add(tf, f"{s.key}.{META_EXT}", meta)
            _add(tf, f"{s.key}.{IMAGE_EXT}", np.ascontiguousarray(s.image, dtype=np.uint8).tobytes())
            count += 1
        tf.close()
        os.chmod(tmp, 0o644)
    return count


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tf.addfile(info, io.BytesIO(data))


def open_stream(url: str | Path):
    """Binary stream of a local path or any WebDataset/gopen URL (pipe:cmd, s3://, https://, file:)."""
    text = str(url)
    if "://" in text or text.startswith("pipe:"):
        import webdataset

        return webdataset.gopen(text, "rb")
    try:
        return open(text, "rb")
    except OSError as exc:
        raise DataError(f"{text}: cannot open shard ({exc.strerror or exc}); re-run 'chestxray prepare'") from None


def iter_shard(url: str | Path, size: int, keep: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
    """Stream samples of one shard in order: dicts with key, image uint8 (size, size), image_id, patient_id,
    labels uint8 (L,). With `keep` (bool per sample position) only those are decoded, and reading stops after
    the last kept one; local files are then read with seeks, so skipped samples cost no I/O."""
    stop = None if keep is None else (int(np.flatnonzero(keep)[-1]) + 1 if keep.any() else 0)
    if stop == 0:
        return
    local = not ("://" in str(url) or str(url).startswith("pipe:"))
    position, meta = 0, None
    with open_stream(url) as stream:
        try:
            tf = tarfile.open(fileobj=stream, mode="r:" if local else "r|")
            for member in tf:
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                wanted = keep is None or (position < len(keep) and keep[position])
                if ext == META_EXT:
                    meta = (key, tf.extractfile(member).read() if wanted else None)
                    continue
                if ext != IMAGE_EXT:
                    continue
                if meta is None or meta[0] != key:
                    raise DataError(f"{url}: sample {key} has pixels but no {META_EXT} record; re-run prepare")
                if wanted:
                    data = tf.extractfile(member).read()
                    if len(data) != size * size:
                        raise DataError(f"{url}: sample {key} holds {len(data)} bytes, expected {size}×{size}; "
                                        "the shard does not match manifest.json (re-run prepare)")
                    info = json.loads(meta[1])
                    yield {"key": key, "image": np.frombuffer(data, np.uint8).reshape(size, size),
                           "image_id": info["image_id"], "patient_id": info["patient_id"],
                           "labels": np.asarray(info["labels"], dtype=np.uint8)}
                position += 1
                meta = None
                if stop is not None and position >= stop:
                    return
        except tarfile.TarError as exc:
            raise DataError(f"{url}: broken shard ({exc}); delete it and re-run 'chestxray prepare'") from None


def read_manifest(prepared: str | Path) -> dict[str, Any]:
    """Load and check PREPARED/manifest.json (local folder or URL prefix)."""
    text = str(prepared).rstrip("/")
    path = f"{text}/{MANIFEST}"
    try:
        with open_stream(path) as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
    except DataError:
        raise DataError(f"{prepared}: no {MANIFEST}; create it with 'chestxray prepare CATALOG --out {prepared}'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); re-run 'chestxray prepare'") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; re-run 'chestxray prepare'")
    return manifest


def shard_urls(prepared: str | Path, split: str, manifest: dict[str, Any]) -> list[str]:
    """Locations of the shards of `split`, in manifest order."""
    if split not in manifest["splits"]:
        raise DataError(f"{prepared}: no split {split!r} (have {list(manifest['splits'])})")
    base = str(prepared).rstrip("/")
    return [f"{base}/{name}" for name in manifest["splits"][split]["shards"]]


def iter_split_samples(prepared: str | Path, split: str, manifest: dict[str, Any] | None = None
                       ) -> Iterator[dict[str, Any]]:
    """All samples of one split in stored order (stable), streamed shard by shard."""
    manifest = manifest or read_manifest(prepared)
    for url in shard_urls(prepared, split, manifest):
        yield from iter_shard(url, int(manifest["image_size"]))
