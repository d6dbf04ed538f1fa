"""Check a PREPARED folder against its manifest: every shard present with its recorded size (cheap: one stat per
shard, or one HEAD request per shard of an http(s):// PREPARED) and its recorded sha256 (reads every byte).

Train and evaluate check the shards they are about to read before anything else (through ChestXrayDataModule):
sizes and sha256 for a local folder by default — a few flipped label bytes keep a shard's size, and evaluate then
reported AUROC 0.359 instead of 0.641 — and sizes only for a remote one, where a checksum would fetch every byte an
extra time. bench/bench_checksums.py measures what the checksum costs against the command (docs/robustness.md).
`chestxray verify PREPARED [--checksums]` runs either check on demand.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chestxray.data.shards import MANIFEST, is_remote, open_stream, read_manifest, shard_size
from chestxray.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    """What was checked: shards, their bytes in total, whether checksums were read, and the damaged shards."""

    prepared: str
    shards: int = 0
    bytes: int = 0
    checksums: bool = False
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        what = "sizes and sha256 checksums" if self.checksums else "sizes"
        return (f"{self.prepared}: {self.shards} shard(s), {self.bytes / 1e6:.1f} MB: {what} match "
                f"{MANIFEST}")


def _sha256(url: str) -> str:
    digest = hashlib.sha256()
    with open_stream(url) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def default_checksums(prepared: str | Path) -> bool:
    """Whether shard checksums are checked when nobody said: yes for a local folder, no for a URL."""
    return not is_remote(prepared)


def shard_problems(prepared: str | Path, manifest: dict[str, Any], checksums: bool | None = False,
                   splits: tuple[str, ...] | None = None) -> VerifyResult:
    """Every damaged shard as '<shard>: <what is wrong>': the size of every shard, and when `checksums` (None:
    default_checksums) the sha256 of the shards of `splits` (None: all), the ones about to be read."""
    checksums = default_checksums(prepared) if checksums is None else checksums
    base = str(prepared).rstrip("/")
    result = VerifyResult(str(prepared), checksums=checksums)
    for split, entry in manifest["splits"].items():
        hashed = checksums and (splits is None or split in splits)
        names = entry.get("shards", [])
        sizes, digests = entry.get("shard_bytes"), entry.get("shard_sha256")
        if sizes is None or digests is None:
            result.problems.append(f"{base}/{MANIFEST}: split {split!r} records no shard sizes or checksums "
                                   "(prepared by an older chestxray)")
            continue
        for name, size, digest in zip(names, sizes, digests):
            url = f"{base}/{name}"
            result.shards += 1
            result.bytes += int(size)
            try:
                actual = shard_size(url)  # local: stat; http(s): HEAD; other schemes: unknown (None)
            except OSError:
                result.problems.append(f"{url}: shard missing")
                continue
            if actual is not None and actual != size:
                result.problems.append(f"{url}: shard is {actual:,} bytes, {MANIFEST} records {size:,} "
                                       f"({'truncated' if actual < size else 'altered'})")
                continue
            if hashed and _sha256(url) != digest:
                result.problems.append(f"{url}: shard checksum differs from {MANIFEST} (altered or damaged); "
                                       "delete it, then")
    return result


def verify_prepared(prepared: str | Path, checksums: bool | None = False, manifest: dict[str, Any] | None = None,
                    splits: tuple[str, ...] | None = None) -> VerifyResult:
    """Raise DataError naming the (first) damaged shard and the way out; returns what was checked when all is well.
    checksums None: default_checksums; splits: the splits whose checksums are read (None: all)."""
    manifest = manifest or read_manifest(prepared)
    result = shard_problems(prepared, manifest, checksums, splits)
    if result.problems:
        more = f" (and {len(result.problems) - 1} more damaged shard(s))" if len(result.problems) > 1 else ""
        first = result.problems[0]
        way = "" if first.endswith("then") else ";"
        raise DataError(f"{first}{way} re-run 'chestxray prepare' with the same catalog and --out {prepared} (it "
                        f"rebuilds only missing or damaged shards){more}")
    log.info("%s", result.summary())
    return result
