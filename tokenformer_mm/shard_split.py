"""Which samples of which shards each rank reads: whole shards where they split evenly, the rest
by sample.

    shards in epoch order --> in each group of shards of one declared length, rounds of
      world_size shards: one whole shard per rank and round --> the shards left over (fewer
      than world_size of a length) are shared: every rank reads them and takes every
      world_size-th sample of their concatenation (sample j to rank j % world_size)

Every sample goes to exactly one rank, whatever the number of shards (one validation shard over
eight processes included); with the lengths declared in ``_info.json`` every rank gets the same
number of samples to within one, so no rank runs short of data ahead of the others. One process
reads every shard whole, in order; equal shards over ranks go whole, round-robin, as ever. A
shared shard is read by every rank, so the split costs I/O only for the few shards left over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


class ShardRead(NamedTuple):
    """Samples ``first, first + step, ...`` of shard ``url`` (``step`` 1: the whole shard)."""

    url: str
    first: int = 0
    step: int = 1


def shared_shards(urls: Sequence[str], lengths: Mapping[str, int], world_size: int) -> list[str]:
    """The shards of ``urls`` (in its order) that the ranks split by sample: in each group of
    one declared length (the undeclared form one group), the last ``len(group) % world_size``."""
    groups: dict[int | None, list[str]] = {}
    for url in urls:
        groups.setdefault(lengths.get(url), []).append(url)
    shared = set()
    for group in groups.values():
        shared.update(group[len(group) // world_size * world_size :])
    return [url for url in urls if url in shared]


def rank_reads(
    urls: Sequence[str], lengths: Mapping[str, int], rank: int, world_size: int
) -> list[ShardRead]:
    """What rank ``rank`` of ``world_size`` reads of ``urls`` (already in the epoch's order):
    its whole shards, then its samples of the shared ones."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    shared = shared_shards(urls, lengths, world_size)
    whole = [url for url in urls if url not in shared]
    reads = [ShardRead(url) for url in whole[rank::world_size]]
    offset = 0  # samples of the shared shards before this one (their index when undeclared)
    for url in shared:
        reads.append(ShardRead(url, (rank - offset) % world_size, world_size))
        offset += lengths.get(url, 1)
    return reads


def samples_in(read: ShardRead, count: int) -> int:
    """How many of a shard's first ``count`` samples ``read`` takes."""
    return len(range(read.first, count, read.step))
