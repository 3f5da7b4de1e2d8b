"""Which samples of which shards each rank reads: whole shards where they balance, the rest as
contiguous ranges of samples.

With the lengths of every shard declared (``_info.json``), the split is balanced by samples
whatever the mix of lengths and their order::

    every rank's share: total // world_size samples, one more for the first total % world_size
    shards, longest first (the epoch order among equal lengths) --> whole, to the rank with the
      most room left, where they fit in it
    the shards that fit nowhere, in epoch order, one concatenation --> cut into consecutive
      ranges that fill each rank's share exactly (rank 0's first)

Every sample goes to exactly one rank, every rank gets its share (the same count to within one),
and at most ``world_size - 1`` shards are read by more than one rank (a cut falls inside them;
a rank stops reading a shard at the end of its range). Equal shards that divide evenly go whole,
round-robin, in epoch order, as with one process.

Without declared lengths (some shard unlisted) the counts are unknown: whole shards go
round-robin in rounds of ``world_size`` and the shards left over are shared by sample (every rank
reads them and takes sample ``j`` of their concatenation when ``j % world_size`` is its rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


class ShardRead(NamedTuple):
    """Samples ``range(first, stop, step)`` of shard ``url`` (``stop`` None: to its end)."""

    url: str
    first: int = 0
    step: int = 1
    stop: int | None = None

    def indices(self, count: int) -> range:
        """The indices this read takes of a shard's first ``count`` samples."""
        return range(self.first, count if self.stop is None else min(count, self.stop), self.step)


def samples_in(read: ShardRead, count: int) -> int:
    """How many of a shard's first ``count`` samples ``read`` takes."""
    return len(read.indices(count))


def rank_shares(total: int, world_size: int) -> list[int]:
    """Samples per rank: ``total`` split to within one, the larger shares first."""
    return [total // world_size + (rank < total % world_size) for rank in range(world_size)]


def split_reads(
    urls: Sequence[str], lengths: Mapping[str, int], world_size: int
) -> list[list[ShardRead]]:
    """What each rank of ``world_size`` reads of ``urls`` (already in the epoch's order)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        return [[ShardRead(url) for url in urls]]
    if not all(url in lengths for url in urls):
        return _round_robin_reads(urls, world_size)
    room = rank_shares(sum(lengths[url] for url in urls), world_size)
    whole: list[list[str]] = [[] for _ in range(world_size)]
    cut = []
    for url in sorted(urls, key=lambda u: -lengths[u]):  # stable: epoch order among equals
        rank = max(range(world_size), key=lambda r: room[r])  # the first of the roomiest
        if lengths[url] <= room[rank]:
            whole[rank].append(url)
            room[rank] -= lengths[url]
        else:
            cut.append(url)
    order = {url: i for i, url in enumerate(urls)}
    reads = [[ShardRead(url) for url in sorted(mine, key=order.get)] for mine in whole]
    rank, left = 0, room[0]  # rank 0 takes the first samples of the cut shards
    for url in sorted(cut, key=order.get):
        start = 0
        while start < lengths[url]:
            while left == 0:
                rank += 1
                left = room[rank]
            stop = min(lengths[url], start + left)
            reads[rank].append(ShardRead(url, start, 1, stop))
            left -= stop - start
            start = stop
    return reads


def _round_robin_reads(urls: Sequence[str], world_size: int) -> list[list[ShardRead]]:
    """Unknown lengths: whole shards in rounds of ``world_size``, the rest shared by sample."""
    rounds = len(urls) // world_size * world_size
    reads = [[ShardRead(url) for url in urls[rank:rounds:world_size]] for rank in range(world_size)]
    # Sample j of the leftovers' concatenation goes to rank j % world_size, each shard counted
    # as one sample before the next (its length is unknown).
    for index, url in enumerate(urls[rounds:]):
        for rank in range(world_size):
            reads[rank].append(ShardRead(url, (rank - index) % world_size, world_size))
    return reads


def rank_reads(
    urls: Sequence[str], lengths: Mapping[str, int], rank: int, world_size: int
) -> list[ShardRead]:
    """What rank ``rank`` of ``world_size`` reads of ``urls`` (``split_reads``)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return split_reads(urls, lengths, world_size)[rank]


def shards_read_by_several(reads: Sequence[Sequence[ShardRead]]) -> list[str]:
    """The shards that more than one rank reads part of (their I/O is repeated)."""
    readers: dict[str, int] = {}
    for mine in reads:
        for url in {read.url for read in mine}:
            readers[url] = readers.get(url, 0) + 1
    return [url for url, count in readers.items() if count > 1]
