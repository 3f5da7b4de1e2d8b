"""Domain-agnostic webdataset streaming: every pipeline's part that is not about pixels or text.

A ``ShardedStream`` reads tar shards in the standard webdataset layout and yields decoded items:

    shard list --(epoch-seeded shuffle, same on every rank)--> rank split --> worker split
      --> tar samples --> shuffle buffer --> decode (per sample) --> pack (optional, stateful)

The rank split (``shard_split``) gives each rank whole shards where they split evenly and a share
by sample of the rest; workers split a rank's shards. One pass over the stream reads each sample
once, on one rank and one worker, for any number of shards and ranks. A domain supplies
``decode`` (bytes -> item) and, for language, ``pack`` (items -> fixed-size blocks). Damaged
shards are read up to the damage, samples whose decode fails are skipped; both are counted
(across workers) and logged, never fatal. A resume starts each worker at its raw position
(``stream_position``): samples before it are read, not decoded.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import multiprocessing as mp
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .distributed import leave_stop_signals_to_main, rank_and_world_size
from .errors import InputError
from .extras import missing_extra
from .shard_split import ShardRead, rank_reads, samples_in, shards_read_by_several, split_reads
from .stream_position import RawSkips, tag_position

try:
    import braceexpand
    import webdataset as wds
except ModuleNotFoundError as error:  # the [train] extra
    raise missing_extra(error, "train") from error

logger = logging.getLogger(__name__)

INFO_FILE = "_info.json"


def expand_shards(pattern: str | Sequence[str]) -> list[str]:
    """Shard paths of a pattern: brace ranges (``train-{000..099}.tar``), globs, or ``::``-lists."""
    patterns = pattern.split("::") if isinstance(pattern, str) else list(pattern)
    urls, missing = [], []
    for part in patterns:
        for expanded in braceexpand.braceexpand(os.path.expanduser(part)):
            matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            urls += [m for m in matches if os.path.isfile(m)]
            missing += [m for m in matches if not os.path.isfile(m)]
    if urls and missing:
        raise ValueError(
            f"shard pattern {pattern!r} names {len(missing)} missing files (e.g. {missing[0]}); "
            "fix the pattern or restore the shards"
        )
    if not urls:
        raise ValueError(
            f"shard pattern {pattern!r} matches no files; give existing .tar shards, e.g. "
            "'/data/imagenet/imagenet1k-train-{0000..1023}.tar' or '/data/shards/*.tar'"
        )
    return urls


def read_shard_lengths(urls: Iterable[str]) -> dict[str, int]:
    """Samples per shard from the ``_info.json`` beside the shards (webdataset/timm layout).

    The file maps ``splits.<name>.filenames`` to ``splits.<name>.shard_lengths``; shards it does
    not list are absent from the result.
    """
    lengths: dict[str, int] = {}
    for directory in sorted({os.path.dirname(os.path.abspath(u)) for u in urls}):
        path = os.path.join(directory, INFO_FILE)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            info = json.load(f)
        for split in info.get("splits", {}).values():
            for name, count in zip(split["filenames"], split["shard_lengths"], strict=True):
                lengths[os.path.join(directory, os.path.basename(name))] = int(count)
    return {u: lengths[os.path.abspath(u)] for u in urls if os.path.abspath(u) in lengths}


class _SharedCounter:
    """An integer shared by the main process and its DataLoader workers (fork or spawn)."""

    def __init__(self, value: int = 0) -> None:
        self._value = mp.Value("q", value)

    @property
    def value(self) -> int:
        return self._value.value

    def set(self, value: int) -> None:
        with self._value.get_lock():
            self._value.value = value

    def add(self, amount: int = 1) -> None:
        with self._value.get_lock():
            self._value.value += amount


class ShardedStream(IterableDataset):
    """Decoded items from webdataset tar shards, split across ranks and DataLoader workers.

    Args:
        urls: shard paths (see ``expand_shards``).
        decode: ``decode(sample, rng)`` maps a raw sample (``{"__key__": ..., "jpg": bytes}``)
            to an item; an exception skips and counts the sample. ``rng`` is a ``random.Random``
            seeded by (seed, epoch, sample key): augmentation is a function of the sample and the
            epoch alone, the same for any number of workers, and replays exactly on resume.
        pack: optional generator stage over the decoded items (e.g. packing tokens into blocks).
        shuffle: shuffle shards (by epoch, identically on every rank) and samples (buffer).
        shuffle_buffer: size of the sample shuffle buffer.
        seed: base seed of both shuffles.
        rank, world_size: this process's share (``shard_split.rank_reads``); default from
            ``torch.distributed``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        decode: Callable[[dict[str, Any], random.Random], Any],
        pack: Callable[[Iterator[Any]], Iterator[Any]] | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.decode = decode
        self.pack = pack
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        default_rank, default_world = rank_and_world_size()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")
        self.declared = read_shard_lengths(self.urls)  # per shard, from _info.json
        shared = len(shards_read_by_several(split_reads(self.urls, self.declared, self.world_size)))
        if shared and self.rank == 0:
            logger.info(
                "%d of %d shards are split by sample over %d processes (more than one process "
                "reads them; more shards would spare that I/O), the rest go whole",
                *(shared, len(self.urls), self.world_size),
            )
        # Samples in all shards, when _info.json lists every one of them (else None).
        lengths = self.declared
        self.num_samples = sum(lengths.values()) if len(lengths) == len(self.urls) else None
        # A shard that yields fewer samples than declared: a warning, or with ``strict`` an error.
        self.strict = False
        self._epoch = _SharedCounter()
        self.skipped_samples = _SharedCounter()
        self.damaged_shards = _SharedCounter()
        self.short_shards = _SharedCounter()
        self.missing_samples = _SharedCounter()
        self.raw_skips = RawSkips()  # set by a resume: raw samples to draw undecoded
        self.tag_positions = shuffle and pack is None  # a training stream of whole samples

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``; seen by persistent workers too."""
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def shards_for_worker(self, worker_id: int, num_workers: int) -> list[ShardRead]:
        """What one worker of this rank reads in the current epoch: shards, and which samples."""
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)
        return rank_reads(urls, self.declared, self.rank, self.world_size)[worker_id::num_workers]

    def _raw_samples(self, reads: Iterable[ShardRead]) -> Iterator[dict[str, Any]]:
        """This rank's samples of each shard; a damaged shard is read up to the damage and counted
        once by each rank that reads it (its missing samples: those of this rank's share)."""
        for read in reads:
            url, count = read.url, 0
            errors: list[Exception] = []
            wanted = read.indices(sys.maxsize)
            for sample in wds.tarfile_samples([{"url": url}], handler=partial(_record, errors)):
                if count >= wanted.stop:  # the end of this rank's range: the rest is not ours
                    break
                if count in wanted:
                    yield sample
                count += 1
            if errors:
                self.damaged_shards.add()
                logger.warning("shard %s is damaged, read up to the damage: %r", url, errors[0])
            declared = self.declared.get(url)
            if declared is not None and count < min(declared, wanted.stop):
                self.short_shards.add()
                self.missing_samples.add(samples_in(read, declared) - samples_in(read, count))
                message = (
                    f"shard {url} yielded {count} of the {declared} samples its {INFO_FILE} "
                    "declares (truncated or rewritten?); rewrite it with scripts/make_shards.py"
                )
                if self.strict:
                    raise InputError(message + " (or drop train.strict_data to warn instead)")
                logger.warning("%s", message)

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        samples = self._raw_samples(self.shards_for_worker(worker_id, num_workers))
        if self.shuffle:
            rng = random.Random(f"shuffle:{self.seed}:{self.epoch}:{self.rank}:{worker_id}")
            samples = _shuffled(samples, self.shuffle_buffer, rng)
        skip = self.raw_skips.get(self.epoch, worker_id)
        items = self._decoded(itertools.islice(samples, skip, None), worker_id, skip)
        yield from self.pack(items) if self.pack is not None else items

    def _decoded(self, samples: Iterable[dict[str, Any]], worker: int, skipped: int) -> Iterator:
        for position, sample in enumerate(samples, skipped + 1):
            try:
                rng = random.Random(f"{self.seed}:{self.epoch}:{sample['__key__']}")
                item = self.decode(sample, rng)
            except Exception as exn:  # a corrupt sample must never stop a run
                self.skipped_samples.add()
                logger.warning(
                    "skipping corrupt sample %s in %s: %r",
                    sample.get("__key__"),
                    sample.get("__url__"),
                    exn,
                )
                continue
            yield tag_position(item, position, worker) if self.tag_positions else item

    def report(self) -> str:
        """One line with the skip counts (also logged as a warning when anything was skipped)."""
        counts = self.counts()
        line = (
            f"skipped {counts['skipped_samples']} corrupt samples; "
            f"{counts['damaged_shards']} of {len(self.urls)} shards damaged; "
            f"{counts['short_shards']} shards short of their {INFO_FILE} count by "
            f"{counts['missing_samples']} samples"
        )
        if any(counts.values()):
            logger.warning("%s", line)
        return line

    def reset_counts(self) -> None:
        """Count from zero again (a validation set's losses are those of one evaluation)."""
        for counter in (
            self.skipped_samples,
            self.damaged_shards,
            self.short_shards,
            self.missing_samples,
        ):
            counter.set(0)

    def counts(self) -> dict[str, int]:
        """What was lost so far, all epochs and workers together (logged in metrics.csv)."""
        return {
            "skipped_samples": self.skipped_samples.value,
            "damaged_shards": self.damaged_shards.value,
            "short_shards": self.short_shards.value,
            "missing_samples": self.missing_samples.value,
        }


def _record(errors: list[Exception], exn: Exception) -> bool:
    """A webdataset error handler: remember the error, keep reading."""
    errors.append(exn)
    return True


def _shuffled(items: Iterable[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle with a bounded buffer."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        buffer[index], item = item, buffer[index]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def stream_loader(
    stream: ShardedStream,
    batch_size: int,
    num_workers: int,
    drop_last: bool,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader over a stream: each worker batches its own shards; pinned memory on CUDA."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        # Its own generator: the workers' base seed must not come from (and shift) the global RNG
        # that training draws dropout and flips from, or a resumed run would not replay exactly.
        generator=torch.Generator(),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=leave_stop_signals_to_main,
    )
