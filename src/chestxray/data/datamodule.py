"""ChestXrayDataModule: streams PREPARED shards into normalised batches for Lightning (any world size, any workers).

Epoch rule (training): the N training samples are laid out in a seeded order of shards (seed, epoch) and cut into
T = world_size × ceil(N / (world_size × batch_size)) consecutive batches whose sizes differ by at most one (so no
batch is larger than batch_size and none is empty). Rank r takes the r-th contiguous block of T / world_size
batches, and within a rank each loader worker a contiguous share of those batches; a seeded buffer shuffles the
samples inside each worker's range. So every rank sees the same number of batches, and every sample appears exactly
once per epoch across all ranks — nothing is padded or dropped. One exception: with batch_size 1 and N not a
multiple of world_size, equal batch counts per rank are impossible without repeats, so T = world_size × ⌊N /
world_size⌋ and the last N mod world_size samples of that epoch's order sit the epoch out (at most world_size − 1;
the order changes every epoch). Each worker only reads the shards its range covers.
Validation/test/split_dataloader: stored order, batches of batch_size (last one smaller), no augmentation, the
whole split on every rank (metrics stay exact), identical for any number of workers.
Speed: shards hold final-size uint8 pixels, so a worker only reads bytes (and augments); batches travel between
processes as uint8 and are normalised to float32 in the main process; workers persist across epochs (the epoch
number reaches them through shared memory).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from chestxray.data.augment import Normalization, build_augment, normalize
from chestxray.data.sampling import SourcePlan, epoch_multiplicity, plan_sources, split_sources
from chestxray.data.shards import iter_shard, read_manifest, shard_urls
from chestxray.data.tasks import is_multiclass
from chestxray.data.verify import verify_prepared
from chestxray.errors import ChestXrayError, DataError


VERIFY_MODES = ("auto", "checksums", "sizes", "none")
_ERROR = "chestxray_error"  # key of the item a loader worker sends instead of a batch when it fails


@dataclass(frozen=True)
class WorkerPlan:
    """What one (rank, worker) reads in one epoch: the shard order, its sample ranges [start, stop) in the
    sequence that order gives, and the sizes of the batches it cuts from them (in order)."""

    shard_order: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]
    batch_sizes: tuple[int, ...]


def plan_epoch(shard_counts: list[int], batch_size: int, *, world_size: int = 1, rank: int = 0,
               num_workers: int = 1, worker: int = 0, shuffle: bool = False, seed: int = 0, epoch: int = 0
               ) -> WorkerPlan:
    """Plan one epoch for one (rank, worker) following the module rule (shuffle=True: training rule)."""
    n = int(sum(shard_counts))
    order = list(range(len(shard_counts)))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(shard_counts)).tolist()
        if n < world_size:
            raise DataError(f"{n} training image(s) cannot be shared by {world_size} ranks; prepare more data")
        total = world_size * math.ceil(n / (world_size * batch_size))
        if total > n:  # only with batch_size 1: a size-0 batch would follow; leave out n mod world_size samples
            total, n = world_size * (n // world_size), world_size * (n // world_size)
        q, rem = divmod(n, total)
        sizes = [q + 1] * rem + [q] * (total - rem)
        per_rank = total // world_size
        rank_batches = list(range(rank * per_rank, (rank + 1) * per_rank))
    else:
        sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        rank_batches = list(range(len(sizes)))
    if shuffle:  # contiguous share per worker: each worker reads few shards
        mine = np.array_split(np.asarray(rank_batches, dtype=int), num_workers)[worker].tolist()
    else:  # round robin: the DataLoader then returns batches in stored order for any number of workers
        mine = rank_batches[worker::num_workers]
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
    ranges: list[tuple[int, int]] = []
    for i in mine:
        if ranges and ranges[-1][1] == bounds[i]:
            ranges[-1] = (ranges[-1][0], bounds[i + 1])
        else:
            ranges.append((bounds[i], bounds[i + 1]))
    return WorkerPlan(tuple(order), tuple(ranges), tuple(sizes[i] for i in mine))


class ShardBatches(IterableDataset):
    """Batches of one split for one rank, images still uint8 (B, 1, H, W) (the loader normalises them);
    set `.epoch` before iterating."""

    def __init__(self, prepared: str | Path, split: str, manifest: dict[str, Any], batch_size: int, *,
                 train: bool = False, world_size: int = 1, rank: int = 0, seed: int = 0, augment: str = "none",
                 in_chans: int = 1, normalization: Normalization = "gray", shuffle_buffer: int | None = None,
                 source_plan: SourcePlan | None = None) -> None:
        self.urls = shard_urls(prepared, split, manifest)
        self.counts = [int(c) for c in manifest["splits"][split]["shard_counts"]]
        # per-source draws (chestxray.data.sampling): how often each stored sample is used in an epoch
        self.source_plan = source_plan
        self.source_of = split_sources(manifest, split)[1] if source_plan is not None else None
        self.size, self.n_labels = int(manifest["image_size"]), len(manifest["labels"])
        self.batch_size, self.train, self.seed = int(batch_size), train, int(seed)
        # shared with the loader workers (also persistent ones, which keep their copy of this object)
        self._epoch = mp.get_context().RawValue("q", 0)
        self.world_size, self.rank = (world_size, rank) if train else (1, 0)
        self.augment, self.in_chans, self.normalization = augment, in_chans, normalization
        # default buffer: up to 1000 samples but at most ~64 MiB of pixels per worker
        buffer = shuffle_buffer if shuffle_buffer is not None else min(1000, max(16, (64 << 20) // self.size ** 2))
        self.shuffle_buffer = int(buffer) if train else 0
        build_augment(augment, self.size, seed)  # fail fast on a bad policy name

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = int(value)

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return len(plan_epoch(self.epoch_counts()[0], self.batch_size, world_size=self.world_size, rank=self.rank,
                              shuffle=self.train, seed=self.seed, epoch=self.epoch).batch_sizes)

    def epoch_counts(self) -> tuple[list[int], list[np.ndarray] | None]:
        """Samples each shard contributes this epoch and, with a source plan, each sample's uses per shard."""
        if self.source_plan is None:
            return self.counts, None
        uses = epoch_multiplicity(self.source_of, self.source_plan, self.seed, self.epoch)
        per_shard = np.split(uses, np.cumsum(self.counts)[:-1])
        return [int(u.sum()) for u in per_shard], per_shard

    def plan(self, worker: int = 0, num_workers: int = 1) -> WorkerPlan:
        return plan_epoch(self.epoch_counts()[0], self.batch_size, world_size=self.world_size, rank=self.rank,
                          num_workers=num_workers, worker=worker, shuffle=self.train, seed=self.seed,
                          epoch=self.epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            yield from self._batches(worker, num_workers)
        except ChestXrayError as exc:
            if info is None:
                raise
            # In a loader worker: hand the error itself to the main process (_EpochLoader raises it there), so the
            # user sees its one line, not "Caught DataError in DataLoader worker process 1" and a traceback.
            yield {_ERROR: exc}

    def _batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        plan = self.plan(worker, num_workers)
        if not plan.batch_sizes:
            return
        entropy = [self.seed, self.epoch, self.rank, worker]
        rng = np.random.default_rng(entropy)
        pipeline = build_augment(self.augment, self.size, int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        samples = self._samples(plan)
        if self.shuffle_buffer > 1:
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        for n in plan.batch_sizes:
            chunk = list(itertools.islice(samples, n))
            if len(chunk) < n:
                raise DataError(f"{self.urls[0].rsplit('/', 1)[0]}: shards hold fewer samples than manifest.json "
                                "lists; re-run 'chestxray prepare'")
            yield self._collate(chunk, pipeline if self.augment != "none" else None)

    def _samples(self, plan: WorkerPlan) -> Iterator[dict[str, Any]]:
        """The plan's samples in sequence order, opening only the shards that overlap its ranges (with a source
        plan, the sequence holds each sample as many times as it is used this epoch)."""
        counts, uses = self.epoch_counts()
        offset, end = 0, plan.ranges[-1][1]
        for index in plan.shard_order:
            count = counts[index]
            keep = np.zeros(count, dtype=bool)
            for lo, hi in plan.ranges:
                if lo < offset + count and hi > offset:
                    keep[max(lo - offset, 0):min(hi - offset, count)] = True
            if keep.any() and uses is None:
                yield from iter_shard(self.urls[index], self.size, keep, self.n_labels)
            elif keep.any():
                wanted = np.repeat(np.arange(len(uses[index])), uses[index])[keep]  # stored positions, repeats
                times = np.bincount(wanted, minlength=len(uses[index]))
                for sample, n in zip(iter_shard(self.urls[index], self.size, times > 0, self.n_labels),
                                     times[times > 0]):
                    for _ in range(int(n)):
                        yield sample
            offset += count
            if offset >= end:
                break

    def _collate(self, chunk: list[dict[str, Any]], pipeline: Callable | None) -> dict[str, Any]:
        images = [pipeline(image=s["image"])["image"] for s in chunk] if pipeline else [s["image"] for s in chunk]
        pixels = torch.from_numpy(np.stack(images)).unsqueeze(1)
        labels = np.stack([s["labels"] for s in chunk]).astype(np.float32)
        labels[~np.stack([s["annotated"] for s in chunk])] = np.nan  # missing: NaN, which the loss and metrics mask
        return {"image": pixels, "labels": torch.from_numpy(labels),
                "image_id": [s["image_id"] for s in chunk], "patient_id": [s["patient_id"] for s in chunk],
                "source": [s["source"] for s in chunk]}


def _buffer_shuffle(samples: Iterator[dict[str, Any]], size: int, rng: np.random.Generator
                    ) -> Iterator[dict[str, Any]]:
    """Seeded shuffle buffer: yields every input exactly once in a locally random order."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(size))
        buffer[i], sample = sample, buffer[i]
        yield sample
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


class _EpochLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch number (from `epoch_of`) before each pass starts workers,
    and normalises each uint8 batch here in the main process: workers then ship 1 byte per pixel instead of
    4 × in_chans (inter-process transfer of float batches cost more than all the other loading work)."""

    def __init__(self, dataset: ShardBatches, epoch_of: Callable[[], int], skip_of: Callable[[], int] = lambda: 0,
                 normalise: bool = True, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_of, self._skip_of, self._normalise = epoch_of, skip_of, normalise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.epoch = self._epoch_of()
        # a run resumed mid-epoch: the epoch's first batches were trained before the stop; reading and dropping
        # them (rather than replanning) yields exactly the batches, augmentations included, an unbroken run sees
        return self._normalised(itertools.islice(super().__iter__(), self._skip_of(), None))

    def _normalised(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        for batch in batches:
            if _ERROR in batch:
                raise batch[_ERROR]
            if not self._normalise:  # uint8 pixels as stored, for the scoring path (chestxray.inference.scoring)
                yield batch
                continue
            pixels = batch["image"]
            out = torch.empty((pixels.shape[0], ds.in_chans, *pixels.shape[2:]), dtype=torch.float32,
                              pin_memory=self.pin_memory and torch.cuda.is_available())
            batch["image"] = normalize(pixels, ds.in_chans, ds.normalization, out=out)
            yield batch


class ChestXrayDataModule(L.LightningDataModule):
    """Loaders over a PREPARED folder. Batches: image float32 (B, C, H, W) normalised, labels float32 (B, L) (NaN
    where a label is missing for that image's source), image_id list[str], patient_id list[str], source list[str]
    ('' for a single-source dataset). `sources` restricts training and validation to those sources and
    `source_sampling` sets each source's share of a training epoch (chestxray.data.sampling). World size and rank come from the attached trainer, else the args.
    verify: first check every shard's size and the sha256 of the shards of `verify_splits` (None: all) ('checksums'),
    sizes only ('sizes'), 'auto' (checksums for a local folder, sizes for a URL: chestxray.data.verify) or nothing
    ('none')."""

    def __init__(self, prepared: str | Path, batch_size: int = 32, num_workers: int = 2, augment: str = "none",
                 in_chans: int = 1, normalization: Normalization = "gray", seed: int = 0, *, world_size: int | None = None,
                 rank: int | None = None, shuffle_buffer: int | None = None, pin_memory: bool | None = None,
                 persistent_workers: bool = True, verify: str = "auto",
                 verify_splits: tuple[str, ...] | None = None, sources: list[str] | tuple[str, ...] | None = None,
                 source_sampling: str = "natural") -> None:
        super().__init__()
        self.prepared = str(prepared)
        self.manifest = read_manifest(prepared)
        self.sources = tuple(sources or ())
        self.source_sampling = source_sampling
        self.source_plans = {split: self._source_plan(split) for split in ("train", "val")}
        if verify not in VERIFY_MODES:
            raise DataError(f"verify={verify!r}: expected one of {VERIFY_MODES}")
        if verify != "none":  # a damaged shard is named now, before any training or evaluation starts
            checksums = {"checksums": True, "sizes": False, "auto": None}[verify]
            verify_prepared(prepared, checksums=checksums, manifest=self.manifest, splits=verify_splits)
        self.labels: tuple[str, ...] = tuple(self.manifest["labels"])
        self.task: str = self.manifest.get("task", "multilabel")
        self.image_size = int(self.manifest["image_size"])
        self.batch_size, self.num_workers, self.augment, self.seed = batch_size, num_workers, augment, seed
        self.in_chans, self.normalization, self.shuffle_buffer = in_chans, normalization, shuffle_buffer
        self._world_size, self._rank = world_size, rank
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self._epochs_started = 0
        normalize(torch.zeros(1, 1, 1, dtype=torch.uint8), in_chans, normalization)  # fail fast on bad settings
        build_augment(augment, self.image_size, seed)

    @property
    def missing_labels(self) -> bool:
        """True when some label is missing for some image (a merged catalog): the loss and metrics mask them."""
        return bool(self.manifest.get("missing_labels", False))

    def _source_plan(self, split: str) -> SourcePlan | None:
        """Per-source draws of a split, or None when every image is used once (no sources chosen, natural)."""
        names, _ = split_sources(self.manifest, split)
        where = f"{self.prepared} ({split})"
        if not names:
            if self.sources or self.source_sampling != "natural":
                raise DataError(f"{self.prepared}: --sources / --source-sampling need a dataset with several "
                                "sources (a merged catalog: 'chestxray catalog merge'); this one has none")
            return None
        counts = self.manifest["splits"][split]["sources"]["count"]
        sampling = self.source_sampling if split == "train" else "natural"  # validation: every chosen image once
        plan = plan_sources(names, counts, sampling, self.sources or None, where)
        return None if plan.draws == tuple(counts) else plan

    def pos_weight(self) -> torch.Tensor:
        """(L,) negatives / positives per label among the training images where the label is annotated, weighted
        by how often the source sampling uses each source's images (positives floored at 1), for
        BCEWithLogitsLoss; for a multiclass task the class weights N / (K * n_class) of the cross-entropy (1 for
        every class when balanced)."""
        train = self.manifest["splits"].get("train")
        if not train or not train["count"]:
            raise DataError(f"{self.prepared}: no training images; pos_weight needs a train split")
        pos = torch.tensor(train["positives"], dtype=torch.float32)
        annotated = torch.tensor(train.get("annotated", [train["count"]] * len(pos)), dtype=torch.float32)
        plan = self.source_plans.get("train")
        if plan is not None:
            weight = torch.tensor(plan.multiplicity, dtype=torch.float32)[:, None]
            pos = (weight * torch.tensor(train["sources"]["positives"], dtype=torch.float32)).sum(0)
            annotated = (weight * torch.tensor(train["sources"]["annotated"], dtype=torch.float32)).sum(0)
        if is_multiclass(self.task):
            return train["count"] / (len(pos) * pos.clamp(min=1.0))
        return (annotated - pos).clamp(min=0.0) / pos.clamp(min=1.0)

    def source_record(self) -> dict[str, Any] | None:
        """What the run trains on, for the card: the sources chosen, the sampling, images and draws per epoch per
        source, and the labels annotated in the chosen training images (the others get no training signal)."""
        names, _ = split_sources(self.manifest, "train")
        if not names:
            return None
        train = self.manifest["splits"]["train"]
        plan = self.source_plans.get("train") or plan_sources(names, train["sources"]["count"])
        chosen = [n for n, d in zip(plan.names, plan.draws) if d > 0]
        annotated = np.asarray(train["sources"]["annotated"])[[names.index(n) for n in chosen]].sum(0)
        return {"trained_on": chosen, "all": names, "sampling": self.source_sampling, "per_epoch": plan.describe(),
                "annotated_labels": [name for name, a in zip(self.labels, annotated.tolist()) if a > 0],
                "missing_labels": self.missing_labels}

    def train_counts(self) -> list[int]:
        """Samples each train shard gives in the first epoch (the epoch's size is the same every epoch)."""
        plan = self.source_plans.get("train")
        counts = [int(c) for c in self.manifest["splits"]["train"]["shard_counts"]]
        return counts if plan is None else [int(sum(plan.draws))]

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        return int(self._world_size or 1), int(self._rank or 0)

    def _epoch(self) -> int:
        trainer = self.trainer
        if trainer is not None:
            # 'processed' is already right when a resumed run creates its first iterator (current_epoch is not yet).
            fit_loop = getattr(trainer, "fit_loop", None)
            return int(fit_loop.epoch_progress.current.processed if fit_loop is not None else trainer.current_epoch)
        self._epochs_started += 1
        return self._epochs_started - 1

    def _resumed_batches(self) -> int:
        """Batches of the current epoch that a run resumed mid-epoch has already trained (else 0): restored by
        Lightning before the first iterator is created, and only while its fit loop is restarting an unfinished
        epoch."""
        fit_loop = getattr(self.trainer, "fit_loop", None) if self.trainer is not None else None
        if fit_loop is None or not fit_loop.restarting:
            return 0
        return int(fit_loop.epoch_loop.batch_progress.current.processed)

    def _loader(self, split: str, train: bool, batch_size: int | None = None, pixels: bool = False,
                planned: bool = False) -> DataLoader:
        """planned: apply the source plan (training and its validation); evaluation reads every image."""
        if split not in self.manifest["splits"] or not self.manifest["splits"][split]["count"]:
            raise DataError(f"{self.prepared}: split {split!r} has no images (have "
                            f"{ {k: v['count'] for k, v in self.manifest['splits'].items()} })")
        world_size, rank = self._ranks() if train else (1, 0)
        dataset = ShardBatches(self.prepared, split, self.manifest, batch_size or self.batch_size, train=train,
                               world_size=world_size, rank=rank, seed=self.seed,
                               augment=self.augment if train else "none", in_chans=self.in_chans,
                               normalization=self.normalization, shuffle_buffer=self.shuffle_buffer,
                               source_plan=self.source_plans.get(split) if planned else None)
        epoch_of = self._epoch if train else (lambda: 0)
        # An own generator: creating an iterator must not draw from the global torch RNG (keeps resumed runs exact).
        return _EpochLoader(dataset, epoch_of, self._resumed_batches if train else (lambda: 0), not pixels,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            persistent_workers=self.persistent_workers and self.num_workers > 0,
                            generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True, planned=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False, planned=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def split_dataloader(self, split: str, batch_size: int | None = None, pixels: bool = False) -> DataLoader:
        """Any split in stored order, no augmentation (for evaluation and prediction); `pixels`: images stay uint8
        (B, 1, S, S) as stored, for a caller that normalises them itself (the scoring path)."""
        return self._loader(split, train=False, batch_size=batch_size, pixels=pixels)
