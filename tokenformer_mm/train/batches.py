"""The data cursor: batches forever, with a position a checkpoint can save and a resume replay."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..distributed import sum_over_ranks
from ..errors import InputError
from ..stream_position import WorkerPositions


class EpochBatches:
    """Batches forever, epoch after epoch; its position (epoch, batch) is saved with checkpoints.

    Resuming mid-epoch starts each worker at the raw sample it had reached (``stream_position``:
    the samples before are read, not decoded) and replays the few batches since, without
    training on them; where positions are unknown (packed text) it replays the epoch's first
    batches. The pipelines draw their augmentation from per-sample seeds, so either way the
    stream is the same stream, as long as the loader's workers split the shards as they did
    (the same ``num_workers``).
    """

    def __init__(self, loader: DataLoader, epoch: int = 0, batch: int = 0) -> None:
        self.loader, self.epoch, self.batch = loader, epoch, batch
        self._iterator: Iterator[Any] | None = None
        self.positions = WorkerPositions(loader.num_workers)
        self._resume_at: dict[str, Any] | None = None  # a saved boundary, until its epoch starts

    def _start_epoch(self) -> None:
        start = self._resume_at or {"batch": 0, "positions": [0] * self.positions.workers}
        self._resume_at, dataset = None, self.loader.dataset
        dataset.set_epoch(self.epoch)
        if hasattr(dataset, "raw_skips"):  # where each worker starts drawing decoded samples
            dataset.raw_skips.set(self.epoch, start["positions"])
        self.positions.start_at(start["batch"], start["positions"])
        self._iterator = iter(self.loader)
        for done in range(start["batch"], self.batch):  # fast-forward: the batches since
            batch = next(self._iterator, None)
            if batch is None:
                raise InputError(
                    f"cannot resume at batch {self.batch} of epoch {self.epoch}: the training "
                    f"data now yields only {done} batches per epoch (did the shards or the batch "
                    "size change?)"
                )
            self.positions.record(batch)

    def __next__(self) -> Any:
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.batch == 0:
                read = data_report(self.loader)
                raise InputError(
                    "the training loader yields no batch: fewer readable samples per rank than "
                    f"train.batch_size ({read}); check data.train_shards, lower the batch size "
                    "or add data"
                ) from None
            self.epoch, self.batch = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._iterator)
        self.batch += 1
        return self.positions.record(batch)

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": self.epoch, "batch": self.batch, "num_workers": self.loader.num_workers}
        boundary = self.positions.boundary() if self._iterator is not None else self._resume_at
        return {**state, "raw_positions": boundary} if boundary else state

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at ``state``'s position: the next batch replays the epoch up to it first.

        Mid-epoch, the workers must be as many as when it was saved: each worker reads its own
        shards, so another count orders the epoch's batches otherwise and the replay would skip
        some samples and repeat others. At an epoch boundary any count continues exactly."""
        epoch, batch = int(state["epoch"]), int(state["batch"])
        saved, now = state.get("num_workers"), self.loader.num_workers
        if batch and saved is not None and max(saved, 1) != max(now, 1):  # 0: one reader too
            raise InputError(
                f"the checkpoint is at batch {batch} of epoch {epoch}, read with "
                f"data.num_workers={saved}; with data.num_workers={now} the epoch's batches come "
                "in another order, and the resume would skip some samples and repeat others: "
                f"resume with data.num_workers={saved} (it may change from a checkpoint at an "
                "epoch's end)"
            )
        self.epoch, self.batch = epoch, batch
        self._iterator = None
        boundary = state.get("raw_positions") if batch else None
        fits = boundary and len(boundary["positions"]) == self.positions.workers
        self._resume_at = dict(boundary) if fits and boundary["batch"] <= batch else None


def data_report(loader: DataLoader) -> str:
    """What a loader's dataset lost so far (corrupt samples, damaged or short shards)."""
    dataset = loader.dataset
    return dataset.report() if hasattr(dataset, "report") else "no data report"


def reset_counts(loader: DataLoader) -> None:
    """Zero what a loader's dataset counts as lost (before each pass over the validation set)."""
    if hasattr(loader.dataset, "reset_counts"):
        loader.dataset.reset_counts()


def data_columns(train: DataLoader, val: DataLoader, device: torch.device) -> dict[str, int]:
    """metrics.csv's ``data/*`` and ``val_data/*`` columns: what the training set lost so far
    and the validation set in its last evaluation, every rank's counts added up (a collective,
    on ``device``: NCCL reduces CUDA tensors only)."""
    totals = {
        f"{prefix}/{name}": torch.tensor(float(value), device=device)
        for prefix, loader in (("data", train), ("val_data", val))
        if hasattr(loader.dataset, "counts")
        for name, value in loader.dataset.counts().items()
    }
    return {name: int(value) for name, value in sum_over_ranks(totals).items()} if totals else {}


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a batch's tensors to ``device``, non-blocking: pinned batches overlap compute."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }
