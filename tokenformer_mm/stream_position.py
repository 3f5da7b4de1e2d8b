"""Where a training stream's workers are in their shuffled raw samples, so that a mid-epoch resume
skips raw samples (read from the tar, never decoded or augmented) instead of replaying batches.

A stream of dict items without packing tags every item with its worker and its position: how many
of the worker's shuffled raw samples were drawn up to it, failed decodes included. The cursor
(``train.batches.EpochBatches``) pops the tags from each batch and keeps, per worker, the
positions after its last two batches. While every worker has data, a DataLoader takes batches
from its workers in turn (worker ``i % W`` gives batch ``i``); at the last point where all had
given the same number of batches, the positions say exactly where each worker's stream stood. A
resume starts each worker there (``RawSkips``) and replays only the batches since (fewer than
``W``). Anything else (packed text, an epoch whose order was not round-robin) replays the epoch's
batches as before: exact, only slower.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Mapping, Sequence
from typing import Any

POSITION_KEY = "__raw_position__"
WORKER_KEY = "__worker__"
MAX_WORKERS = 256  # workers a resume can start mid-stream; more replay instead


def tag_position(item: Any, position: int, worker: int) -> Any:
    """``item`` with its worker and raw position (dict items only; others pass untagged)."""
    if not isinstance(item, Mapping):
        return item
    return {**item, POSITION_KEY: position, WORKER_KEY: worker}


class RawSkips:
    """Raw samples each worker draws without decoding at the start of one epoch, in memory the
    DataLoader's workers share with the main process (they may have started already)."""

    def __init__(self) -> None:
        self._epoch = mp.Value("q", -1)
        self._counts = mp.Array("q", MAX_WORKERS)

    def set(self, epoch: int, counts: Sequence[int]) -> None:
        """In ``epoch``, worker w draws ``counts[w]`` raw samples undecoded first."""
        with self._epoch.get_lock():
            self._epoch.value = epoch
            for worker, count in enumerate(counts[:MAX_WORKERS]):  # beyond: none (boundary)
                self._counts[worker] = count

    def get(self, epoch: int, worker: int) -> int:
        current = self._epoch.value == epoch and worker < MAX_WORKERS
        return self._counts[worker] if current else 0


class WorkerPositions:
    """The cursor's record of the epoch so far: each worker's positions after its last two
    batches, and whether the batches came round-robin by worker."""

    def __init__(self, num_workers: int) -> None:
        self.workers = max(num_workers, 1)  # 0: the main process reads, as one worker
        self.start_at(0, [0] * self.workers)

    def start_at(self, batches: int, positions: Sequence[int]) -> None:
        """Begin (or resume) an epoch after ``batches`` batches, worker w at ``positions[w]``."""
        self.batches, self.round_robin = batches, True
        self.last = dict(enumerate(positions))
        self.previous = dict(self.last)

    def record(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Note where ``batch`` leaves its worker; the batch without the tags."""
        if POSITION_KEY not in batch:
            self.round_robin = False
            return batch
        worker = int(batch.pop(WORKER_KEY)[0])
        position = int(batch.pop(POSITION_KEY).max())
        self.round_robin &= worker == self.batches % self.workers
        self.previous[worker], self.last[worker] = self.last.get(worker, 0), position
        self.batches += 1
        return batch

    def boundary(self) -> dict[str, Any] | None:
        """The last batch count at which every worker had given as many batches, and each
        worker's position there; ``None`` if this epoch's order was not round-robin."""
        if not self.round_robin or self.workers > MAX_WORKERS:
            return None
        ahead = self.batches % self.workers  # workers 0 .. ahead-1 gave one batch more
        positions = [self.previous[w] if w < ahead else self.last[w] for w in range(self.workers)]
        return {"batch": self.batches - ahead, "positions": positions}
