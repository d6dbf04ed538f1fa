"""The prepared-shard format: plain POSIX tar files in WebDataset layout, plus manifest.json.

Each sample is two consecutive members with the same key (an 8-digit position within its split):
  <key>.json  {"image_id", "patient_id", "labels": [0/1 per label, schema order; null where the label is MISSING
              (a merged catalog's source does not annotate it)], "source": name (only in a multi-source catalog)}
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.data.manifest import check_manifest
from chestxray.data.remote import open_http
from chestxray.errors import DataError, clip
from chestxray.files import atomic_path

FORMAT = "chestxray-prepared/1"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.csv"
IMAGE_EXT, META_EXT = "gray", "json"


@dataclass
class ShardSample:
    """One prepared sample: pixels uint8 (S, S) plus its identity, labels (None: missing) and source."""

    key: str
    image: np.ndarray
    image_id: str
    patient_id: str
    labels: list[int | None]
    source: str = ""


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
            record = {"image_id": s.image_id, "patient_id": s.patient_id,
                      "labels": [None if v is None else int(v) for v in s.labels]}
            if s.source:
                record["source"] = s.source
            meta = json.dumps(record).encode("utf-8")
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


def is_remote(url: str | Path) -> bool:
    """True for a URL (http(s)://, s3://, pipe:… and other WebDataset/fsspec schemes), False for a local path."""
    text = str(url)
    return "://" in text or text.startswith("pipe:")


def open_stream(url: str | Path):
    """Binary stream of a local path, an http(s):// URL (chestxray.data.remote: a drop, a stall or an HTTP error
    is a DataError naming the URL) or any other WebDataset/gopen URL (s3:// through fsspec or the aws CLI,
    pipe:cmd, gs://, file:)."""
    text = str(url)
    if text.startswith(("http://", "https://")):
        return open_http(text)
    if is_remote(text):
        import webdataset

        return webdataset.gopen(text, "rb")
    try:
        return open(text, "rb")
    except OSError as exc:
        raise DataError(f"{text}: cannot open shard ({exc.strerror or exc}); re-run 'chestxray prepare'") from None


def shard_size(url: str | Path) -> int | None:
    """Bytes of a local shard (stat) or of an http(s) one (HEAD, Content-Length); None where a scheme cannot say.
    A missing shard raises FileNotFoundError; an unreachable server raises DataError."""
    text = str(url)
    if text.startswith(("http://", "https://")):
        try:
            with open_http(text, "HEAD") as response:
                length = response.headers.get("Content-Length")
        except DataError as exc:
            if "HTTP 404" in str(exc):
                raise FileNotFoundError(text) from None
            raise
        return int(length) if length is not None else None
    if is_remote(text):
        return None
    return os.stat(text).st_size


def iter_shard(url: str | Path, size: int, keep: np.ndarray | None = None, n_labels: int | None = None
               ) -> Iterator[dict[str, Any]]:
    """Stream samples of one shard in order: dicts with key, image uint8 (size, size), image_id, patient_id,
    labels uint8 (L,) (0 where missing), annotated bool (L,) (False where missing) and source ('' for a
    single-source dataset). With `keep` (bool per sample position) only those are read, and reading stops after the
    last kept one; local files are read with seeks, so skipped samples cost no I/O. With `n_labels` a sample
    holding another number of labels than the manifest names is a DataError (not a shape error in the loss)."""
    stop = None if keep is None else (int(np.flatnonzero(keep)[-1]) + 1 if keep.any() else 0)
    if stop == 0:
        return
    position, meta = 0, None
    try:
        with open_stream(url) as stream:
            for name, read in _tar_members(stream, str(url)):
                key, _, ext = name.rpartition("/")[2].partition(".")
                wanted = keep is None or (position < len(keep) and keep[position])
                if ext == META_EXT:
                    meta = (key, read() if wanted else None)
                    continue
                if ext != IMAGE_EXT:
                    continue
                if meta is None or meta[0] != key:
                    raise DataError(f"{url}: sample {key} has pixels but no {META_EXT} record; re-run prepare")
                if wanted:
                    data = read()
                    if len(data) != size * size:
                        raise DataError(f"{url}: sample {key} holds {len(data)} bytes, expected {size}×{size}; "
                                        "the shard does not match manifest.json (re-run prepare)")
                    info = _sample_record(meta[1], url, key, n_labels)
                    annotated = np.array([v is not None for v in info["labels"]], dtype=bool)
                    yield {"key": key, "image": np.frombuffer(data, np.uint8).reshape(size, size),
                           "image_id": info["image_id"], "patient_id": info["patient_id"],
                           "labels": np.array([v or 0 for v in info["labels"]], dtype=np.uint8),
                           "annotated": annotated, "source": info.get("source", "")}
                position += 1
                meta = None
                if stop is not None and position >= stop:
                    return
        if stop is not None and position < stop:
            raise DataError(f"{url}: broken shard (it ends after {position} sample(s), the manifest lists more); "
                            "re-run 'chestxray prepare'")
    except (OSError, HTTPException) as exc:  # a dropped connection or a failing disk while streaming
        raise DataError(f"{url}: reading the shard failed ({exc or type(exc).__name__}); check the network or "
                        "disk and run again") from None


def _sample_record(raw: bytes, url: str | Path, key: str, n_labels: int | None) -> dict[str, Any]:
    """A sample's JSON record, checked: image_id, patient_id, labels 0/1 or null (missing; as many as the manifest
    names) and, when present, the source name."""
    try:
        info = json.loads(raw)
        labels = info["labels"]
        ok = (isinstance(labels, list)
              and all(v is None or (v in (0, 1) and not isinstance(v, float)) for v in labels)
              and isinstance(info["image_id"], str) and isinstance(info["patient_id"], str)
              and isinstance(info.get("source", ""), str))
    except (ValueError, TypeError, KeyError):
        ok, labels = False, None
    if not ok:
        raise DataError(f"{url}: sample {key} has a damaged record (image_id, patient_id and 0/1/null labels "
                        "expected); re-run 'chestxray prepare'")
    if n_labels is not None and len(labels) != n_labels:
        raise DataError(f"{url}: sample {key} holds {len(labels)} label(s) but {MANIFEST} names {n_labels}; the "
                        "shards and the manifest come from different prepare runs: re-run 'chestxray prepare'")
    return info


def _tar_members(stream, where: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, read) for each regular file of a POSIX tar stream; data not read is skipped (seek when possible).

    A lean reader (tarfile parses every header field and costs ~0.5 ms per sample here): ustar and GNU headers
    with checksum check, PAX 'path' records and GNU long names; anything else is skipped.
    """
    seekable = stream.seekable() if hasattr(stream, "seekable") else False
    long_name: str | None = None
    while True:
        header = stream.read(512)
        if len(header) < 512 or header.count(0) == 512:
            if 0 < len(header) < 512:
                raise DataError(f"{where}: broken shard (truncated tar header); re-run 'chestxray prepare'")
            return
        try:
            size = _tar_number(header[124:136])
            checksum = _tar_number(header[148:156])
        except ValueError:
            raise DataError(f"{where}: broken shard (bad tar header); re-run 'chestxray prepare'") from None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise DataError(f"{where}: broken shard (tar header checksum mismatch); re-run 'chestxray prepare'")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        kind, padding, state = header[156:157], (-size) % 512, {"left": size}

        def read(n: int = size, st: dict = state) -> bytes:
            data = stream.read(n)
            if len(data) != n:
                raise DataError(f"{where}: broken shard (truncated member); delete it and re-run 'chestxray prepare'")
            st["left"] = 0
            return data

        if kind in (b"L", b"x", b"g"):
            extra = read().decode("utf-8", "replace")
            if kind == b"L":
                long_name = extra.rstrip("\0")
            elif kind == b"x":
                long_name = next((rec.split("=", 1)[1] for rec in extra.split("\n")
                                  if " path=" in rec), long_name)
        elif kind in (b"0", b"\0"):
            yield (long_name or name), read
            long_name = None
        skip = state["left"] + padding
        if skip:
            if seekable:
                stream.seek(skip, 1)
            else:
                stream.read(skip)


def _tar_number(field: bytes) -> int:
    """A tar numeric field: octal text, or base-256 when the high bit of the first byte is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def read_manifest(prepared: str | Path) -> dict[str, Any]:
    """Load and check PREPARED/manifest.json (local folder or URL prefix)."""
    text = str(prepared).rstrip("/")
    path = f"{text}/{MANIFEST}"
    try:
        with open_stream(path) as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
    except DataError:
        if is_remote(text):  # the opener's message names the URL and what went wrong (404, unreachable …)
            raise
        raise DataError(f"{prepared}: no {MANIFEST}; create it with "
                        f"'chestxray prepare CATALOG --out {prepared}'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({clip(exc, 200)}); re-run 'chestxray prepare'") from None
    if isinstance(manifest, dict) and manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {clip(manifest.get('format'), 60)!r}, expected {FORMAT!r}; re-run "
                        "'chestxray prepare'")
    return check_manifest(manifest, path)


# Manifest settings that decide the pixels a model sees (shard size or training order do not).
PREPROCESSING_KEYS = ("image_size", "resize", "interpolation", "storage")


def preprocessing(manifest: dict[str, Any]) -> dict[str, Any]:
    """How the prepared pixels were made (size, resize mode, interpolation, storage): recorded in the bundle card
    by training and compared by evaluation, so a model is never scored on differently made inputs."""
    settings = {**manifest.get("settings", {}), "image_size": manifest.get("image_size"),
                "resize": manifest.get("resize", "pad")}
    return {key: settings[key] for key in PREPROCESSING_KEYS if settings.get(key) is not None}


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
        yield from iter_shard(url, int(manifest["image_size"]), n_labels=len(manifest["labels"]))
