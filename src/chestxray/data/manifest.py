"""manifest.json's own protection: a digest over everything it says, and a check of its shape before any of it is used.

Shard checksums protect the pixels and labels inside the shards; nothing protected the manifest itself, so an edited
image size, label list, count or shard path was read as true (a shard path `../outside.tar` was read from outside the
folder, a label list of the wrong length ended in a shape error inside the loss). `seal` adds `manifest_sha256`, the
sha256 of the manifest's canonical JSON without that field; `check_manifest` recomputes it and checks every field a
reader relies on, each failure one line naming the field and the way out (re-run prepare). The digest detects damage
and careless edits, not a forger who recomputes it: it is integrity, not authenticity.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from chestxray.data.catalog import SPLITS, TASKS
from chestxray.errors import DataError, clip

DIGEST = "manifest_sha256"
SIZE_RANGE = (8, 4096)  # prepare's --size range
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.tar$")  # a plain file name inside the folder: no '/' or '..'


UNSEALED = (DIGEST, "created")  # the creation time is left out, so re-running prepare gives the same digest


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces) without its digest and creation time."""
    body = {k: v for k, v in manifest.items() if k not in UNSEALED}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as JSON will hold it (values through str where JSON has no type) plus its digest, last."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != DIGEST}, default=str))
    return {**body, DIGEST: manifest_digest(body)}


def _fail(where: str, what: str) -> DataError:
    return DataError(f"{where}: {what}; the manifest is damaged or was edited: re-run 'chestxray prepare' with the "
                     "same catalog and --out (it keeps the shards that still match)")


def _ints(value: Any, n: int | None, low: int = 0) -> bool:
    """A list of `n` (any length when None) whole numbers >= low (JSON true/false are not numbers here)."""
    return (isinstance(value, list) and (n is None or len(value) == n)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value))


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """Raise DataError unless `manifest` is a sealed chestxray manifest whose fields agree with each other: labels,
    task, image size, per split its counts, shard names (plain file names in the folder), sizes, checksums and
    positives per label. Returns the manifest."""
    if not isinstance(manifest, dict):
        raise _fail(where, f"expected a JSON object, found a {type(manifest).__name__}")
    if DIGEST not in manifest:
        raise DataError(f"{where}: no {DIGEST} (written by an older chestxray, or edited); re-run 'chestxray "
                        "prepare' with the same catalog and --out (it keeps the shards that still match)")
    try:
        actual = manifest_digest(manifest)
    except ValueError:  # NaN or infinity somewhere: not something prepare writes
        actual = ""
    if actual != manifest[DIGEST]:
        raise _fail(where, f"its content does not match its {DIGEST} (something in it changed after prepare)")
    labels = manifest.get("labels")
    if not (isinstance(labels, list) and labels and all(isinstance(n, str) and n.strip() for n in labels)
            and len(set(labels)) == len(labels)):
        raise _fail(where, f"'labels' must be a list of distinct names, found {clip(labels, 80)}")
    if manifest.get("task", "multilabel") not in TASKS:
        raise _fail(where, f"'task' {clip(manifest.get('task'), 40)} is not one of {list(TASKS)}")
    size = manifest.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and SIZE_RANGE[0] <= size <= SIZE_RANGE[1]):
        raise _fail(where, f"'image_size' must be a whole number of pixels from {SIZE_RANGE[0]} to {SIZE_RANGE[1]}, "
                           f"found {clip(size, 40)}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise _fail(where, f"'splits' must map split names to their shards, found {clip(splits, 80)}")
    for split, entry in splits.items():
        _check_split(split, entry, len(labels), where)
    return manifest


def _check_split(split: str, entry: Any, n_labels: int, where: str) -> None:
    """One split's record: known name, shard names, per-shard counts / bytes / sha256 of one length, totals agree."""
    if split not in SPLITS:
        raise _fail(where, f"unknown split {clip(split, 40)!r} (expected {list(SPLITS)})")
    if not isinstance(entry, dict):
        raise _fail(where, f"split {split!r} must be an object, found a {type(entry).__name__}")
    names = entry.get("shards")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(where, f"split {split!r}: 'shards' must be a list of file names")
    for name in names:
        if not _SHARD_NAME.match(name):
            raise _fail(where, f"split {split!r}: shard {clip(name, 80)!r} is not a plain file name inside the "
                               "folder (a path that leaves the folder is never read)")
    n = len(names)
    if not _ints(entry.get("shard_counts"), n, 1) or not _ints(entry.get("shard_bytes"), n, 1):
        raise _fail(where, f"split {split!r}: 'shard_counts' and 'shard_bytes' must be one positive number per shard")
    digests = entry.get("shard_sha256")
    if not (isinstance(digests, list) and len(digests) == n
            and all(isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)):
        raise _fail(where, f"split {split!r}: 'shard_sha256' must be one sha256 per shard")
    count = entry.get("count")
    if not _ints([count], 1) or count != sum(entry["shard_counts"]):
        raise _fail(where, f"split {split!r}: 'count' {clip(count, 20)} is not the sum of 'shard_counts' "
                           f"({sum(entry['shard_counts'])})")
    positives = entry.get("positives")
    if not _ints(positives, n_labels):
        raise _fail(where, f"split {split!r}: 'positives' must hold one count per label ({n_labels} labels), "
                           f"found {clip(positives, 80)}")
    if any(p > count for p in positives):
        raise _fail(where, f"split {split!r}: a label has more positives than the split has images")
    annotated = entry.get("annotated", [count] * n_labels)  # absent: written before missing labels existed
    if not _ints(annotated, n_labels) or any(a > count or p > a for a, p in zip(annotated, positives)):
        raise _fail(where, f"split {split!r}: 'annotated' must hold one count per label, between the label's "
                           "positives and the split's images")
    if "sources" in entry:
        _check_sources(split, entry["sources"], entry, n_labels, where)


def _check_sources(split: str, block: Any, entry: dict[str, Any], n_labels: int, where: str) -> None:
    """A split's per-source record: distinct names, counts summing to the split's, per-source positives/annotated
    per label, and per shard one source character per sample (chestxray.data.sampling)."""
    from chestxray.data.sampling import ALPHABET

    names = block.get("names") if isinstance(block, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
            and len(set(names)) == len(names) and len(names) <= len(ALPHABET)):
        raise _fail(where, f"split {split!r}: 'sources.names' must be a list of distinct source names")
    k = len(names)
    if not _ints(block.get("count"), k) or sum(block["count"]) != entry["count"]:
        raise _fail(where, f"split {split!r}: 'sources.count' must give one count per source summing to 'count'")
    for key in ("positives", "annotated"):
        value = block.get(key)
        if not (isinstance(value, list) and len(value) == k and all(_ints(v, n_labels) for v in value)):
            raise _fail(where, f"split {split!r}: 'sources.{key}' must hold one count per label for each source")
    codes = block.get("shard_codes")
    allowed = set(ALPHABET[:k])
    if not (isinstance(codes, list) and len(codes) == len(entry["shards"])
            and all(isinstance(c, str) and len(c) == n and set(c) <= allowed
                    for c, n in zip(codes, entry["shard_counts"]))):
        raise _fail(where, f"split {split!r}: 'sources.shard_codes' must hold one source character per sample of "
                           "each shard")
