"""Sources in a prepared dataset: which source each stored sample came from (one character per sample in the
manifest), and how training draws from them.

`source_sampling` (a TrainConfig setting) decides how much of each epoch each source fills:
- 'natural' — every image once an epoch (sources in their own proportions): exactly the behaviour without sources;
- 'balanced' — every source the same share of the epoch; a small source's images are repeated, a large one's drawn
  without replacement;
- 'NAME=W,NAME=W' — shares proportional to the weights; a weight 0 leaves a source out.
`sources` (a list of names; 'all' or none: every source) restricts training and validation to those sources (the
rest are not read).
The epoch keeps the size of the chosen sources' images together, and the counts per source are exact in every
epoch (a share s of N images: every image of the source floor(s N / n) times, plus a seeded draw without replacement
for the remainder), so the number of steps is known before training and resumed runs see the same epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chestxray.errors import ConfigError, DataError

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # one character per sample: source index
SAMPLING_MODES = ("natural", "balanced")


def encode_sources(codes: Sequence[int]) -> str:
    """Source indices (0..61) as one manifest string, one character per sample."""
    return "".join(ALPHABET[int(c)] for c in codes)


def decode_sources(text: str) -> np.ndarray:
    """The source index per sample from a manifest string (DataError on a character outside the alphabet)."""
    lookup = {c: i for i, c in enumerate(ALPHABET)}
    try:
        return np.fromiter((lookup[c] for c in text), dtype=np.int16, count=len(text))
    except KeyError:
        raise DataError("manifest.json: a shard's source codes hold an unknown character; re-run 'chestxray "
                        "prepare'") from None


def split_sources(manifest: dict[str, Any], split: str) -> tuple[list[str], np.ndarray | None]:
    """(source names, source index per stored sample in shard order) of a split; ([], None) without sources."""
    entry = manifest["splits"].get(split) or {}
    block = entry.get("sources")
    if not block:
        return [], None
    return list(block["names"]), np.concatenate([decode_sources(t) for t in block["shard_codes"]]) if \
        block["shard_codes"] else np.zeros(0, np.int16)


def source_list(text: str | Sequence[str] | None) -> list[str]:
    """Source names from a --sources value ('nih,kaggle'); '' or 'all' means every source ([])."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text or []) if n.strip()]
    return [] if names in ([], ["all"]) else names


def parse_sampling(text: str) -> dict[str, float] | str:
    """'natural', 'balanced' or 'NAME=W,NAME=W' (non-negative weights, one positive at least)."""
    text = str(text).strip()
    if text in SAMPLING_MODES:
        return text
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not eq or not name.strip() or not weight >= 0 or not np.isfinite(weight):
            raise ConfigError(f"--source-sampling {text!r}: expected natural, balanced or NAME=WEIGHT,... with "
                              "non-negative weights (e.g. nih=1,kaggle=1,covid=2)")
        weights[name.strip()] = weight
    if not weights or not any(w > 0 for w in weights.values()):
        raise ConfigError(f"--source-sampling {text!r}: at least one source needs a positive weight")
    return weights


@dataclass(frozen=True)
class SourcePlan:
    """Expected draws per epoch for each source of a split: `draws[k]` images of source k (0: left out)."""

    names: tuple[str, ...]
    counts: tuple[int, ...]
    draws: tuple[int, ...]

    @property
    def multiplicity(self) -> np.ndarray:
        """(K,) expected uses of one image of each source per epoch (draws / count)."""
        counts = np.maximum(np.asarray(self.counts, dtype=float), 1)
        return np.asarray(self.draws, dtype=float) / counts

    def describe(self) -> dict[str, Any]:
        return {name: {"images": n, "per_epoch": d} for name, n, d in zip(self.names, self.counts, self.draws)}


def plan_sources(names: Sequence[str], counts: Sequence[int], sampling: str = "natural",
                 sources: Sequence[str] | None = None, where: str = "") -> SourcePlan:
    """Draws per epoch per source from the sampling setting and the chosen sources (None: all)."""
    names, counts = tuple(names), tuple(int(c) for c in counts)
    chosen = set(names) if not sources else set(sources)
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ConfigError(f"{where}: --sources names {unknown}, not sources of this dataset ({list(names)})")
    mode = parse_sampling(sampling)
    if isinstance(mode, dict):
        unknown = sorted(set(mode) - set(names))
        if unknown:
            raise ConfigError(f"{where}: --source-sampling names {unknown}, not sources of this dataset ({list(names)})")
        weights = np.array([mode.get(n, 0.0) if n in chosen else 0.0 for n in names])
    elif mode == "balanced":
        weights = np.array([1.0 if n in chosen and c > 0 else 0.0 for n, c in zip(names, counts)])
    else:
        weights = np.array([float(c) if n in chosen else 0.0 for n, c in zip(names, counts)])
    weights = np.where(np.asarray(counts) > 0, weights, 0.0)
    if weights.sum() <= 0:
        raise ConfigError(f"{where}: the chosen sources have no images in this split")
    total = sum(c for n, c in zip(names, counts) if n in chosen and weights[names.index(n)] > 0)
    draws = _largest_remainder(weights / weights.sum() * total)
    return SourcePlan(names, counts, tuple(int(d) for d in draws))


def _largest_remainder(shares: np.ndarray) -> np.ndarray:
    """Whole numbers summing to round(sum(shares)), each within one of its share."""
    base = np.floor(shares).astype(int)
    left = int(round(shares.sum())) - int(base.sum())
    order = np.argsort(-(shares - base), kind="stable")
    base[order[:left]] += 1
    return base


def epoch_multiplicity(source_of: np.ndarray, plan: SourcePlan, seed: int, epoch: int) -> np.ndarray:
    """(N,) how many times each stored sample is used this epoch: exactly plan.draws[k] uses for source k, spread
    as evenly as possible (every image floor(d/n) times, the remainder a seeded draw without replacement)."""
    uses = np.zeros(len(source_of), dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 7919])
    for k, draws in enumerate(plan.draws):
        members = np.flatnonzero(source_of == k)
        if not len(members) or not draws:
            continue
        whole, extra = divmod(int(draws), len(members))
        uses[members] = whole
        if extra:
            uses[rng.choice(members, size=extra, replace=False)] += 1
    return uses
