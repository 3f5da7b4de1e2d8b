"""Process groups and the collectives the library uses, each written once.

Under torchrun every process joins one group (NCCL on GPU, gloo on CPU); without it every
function here is the one-process identity, so library code never branches on "distributed?".

Metrics cross ranks in exactly two ways: *totals* that add up (a loss summed over samples, a
count of correct answers) are summed with ``sum_over_ranks``; metrics that need every sample at
once (CLIP retrieval) gather their features to rank 0 with ``gather_rows_to_main``, are computed
there and sent to every rank with ``broadcast_from_main``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# The signals that ask a run to stop cleanly (train.stop_signals, train/preemption.py).
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


def leave_stop_signals_to_main(worker_id: int = 0) -> None:
    """A DataLoader worker's start: a stop signal sent by anyone but the main process (SLURM
    signals every process of a job, torchrun its workers' process groups) is the main process's
    to act on, and the worker keeps serving its step; the main process's own SIGTERM (how
    DataLoader and multiprocessing end a worker) still ends it. Linux only: elsewhere, as before.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return
    signals = {signal.Signals[name] for name in STOP_SIGNALS}
    for sig in signals:  # not the trainer's handler a forked worker inherits
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # pending, for the watcher to take
    main = os.getppid()

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_pid == main:  # the main process ends its worker: quietly, at once
                os._exit(0)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the torchrun process group if launched by torchrun; return (rank, world, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    target = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank_and_world_size()[0], world_size, target


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def sum_over_ranks(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every rank's scalar totals added up (in fp64): the one reduction of additive metrics."""
    names = list(totals)
    first = next(iter(totals.values()))
    stacked = torch.stack([totals[name].double().reshape(()) for name in names]).to(first.device)
    if rank_and_world_size()[1] > 1:
        dist.all_reduce(stacked)
    return dict(zip(names, stacked.tolist(), strict=True))


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (the logged training loss)."""
    world_size = rank_and_world_size()[1]
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return value


def gather_rows_to_main(rows: torch.Tensor) -> torch.Tensor | None:
    """Rank 0: every rank's ``rows`` (N_r, ...) concatenated in rank order; other ranks: None.

    Ranks may hold different numbers of rows (an evaluation split unevenly by shards): the
    counts travel first, each rank pads to the largest, rank 0 drops the padding.
    """
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return rows
    device = _collective_device(rows)
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = rows.new_zeros((longest, *rows.shape[1:]), device=device)
    padded[: rows.shape[0]] = rows
    received = [torch.empty_like(padded) for _ in range(world_size)] if rank == 0 else None
    dist.gather(padded, received, dst=0)
    if rank != 0:
        return None
    return torch.cat([r[: int(c.item())] for r, c in zip(received, counts, strict=True)]).to(
        rows.device
    )


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable, no tensors: e.g. a metrics dict) on every rank."""
    if rank_and_world_size()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` (small and picklable: e.g. each rank's RNG state) from every rank, in rank order.

    Tensors travel as NumPy arrays: tensors inside ``all_gather_object`` fail to unpickle in
    torch 2.14 (``UntypedStorage has no attribute dtype``).
    """
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [obj]
    objects: list[Any] = [None] * world_size
    dist.all_gather_object(objects, _map_leaves(obj, torch.Tensor, lambda t: t.cpu().numpy()))
    return [_map_leaves(o, np.ndarray, torch.from_numpy) for o in objects]


def _map_leaves(obj: Any, kind: type, fn: Any) -> Any:
    if isinstance(obj, kind):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_leaves(v, kind, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(v, kind, fn) for v in obj)
    return obj


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
