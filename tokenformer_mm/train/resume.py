"""The run's checkpoint protocol: each stateful part of a run saved into one checkpoint and put
back from it (docs/design.md, "The engine").

The parts are the torchtitan set: the model, the optimizer, the LR schedule, the EMA, the run's
counters (``TrainState``) and, per rank, the data cursor and the RNG states. A full checkpoint
(one process, DDP) keeps the optimizer state by parameter name, as a sharded one (FSDP2) does,
so either resumes into one process, DDP or FSDP2 alike, on any number of ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_layout import newest_checkpoint
from ..distributed import all_gather_objects, rank_and_world_size, sum_over_ranks
from ..growth import model_shape
from . import checkpoint, parallel, start
from .batches import EpochBatches
from .rng import rng_state, seed_everything, set_rng_state
from .sharded import is_sharded, load_sharded, save_sharded
from .state import TrainState

logger = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the older ones are intact."""


@dataclass
class RunParts:
    """What a checkpoint of a run holds, each part with its own state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: nn.Module | None
    state: TrainState
    data: EpochBatches


def save(parts: RunParts, ckpt_dir: Path, sharded: bool, keep: int) -> None:
    """Checkpoint ``parts`` at their step (a collective: every rank calls it)."""
    per_rank = all_gather_objects({"rng": rng_state(), "data": parts.data.state_dict()})
    state = {
        **parts.state.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "ranks": per_rank,
    }
    is_main = rank_and_world_size()[0] == 0
    step = parts.state.step
    if sharded:  # every rank writes its shards of the model and the optimizer
        state["shape"] = model_shape(parts.model)
        save_sharded(ckpt_dir, step, parts.model, parts.optimizer, state if is_main else None, keep)
        return
    failure = None
    if is_main:
        state["optimizer"] = parallel.full_optimizer_state(parts.model, parts.optimizer)
        try:
            checkpoint.save(ckpt_dir, step, parts.model, state, parts.ema, keep)
        except (OSError, RuntimeError) as error:  # a full disk (torch.save: RuntimeError)
            failure = error
    device = next(parts.model.parameters()).device  # NCCL reduces CUDA tensors only
    failed = torch.tensor(float(failure is not None), device=device)
    if sum_over_ranks({"failed": failed})["failed"]:
        raise CheckpointWriteError(
            f"the checkpoint of step {step} could not be written in {ckpt_dir} "
            f"({failure or 'on rank 0'}); nothing of it was kept, and the newest checkpoint, "
            f"{newest_checkpoint(ckpt_dir)}, is intact. Free space (a save needs room for "
            f"train.keep_checkpoints={keep} checkpoints plus the one it writes) and continue "
            "with resume=true"
        ) from failure


def restore(parts: RunParts, path: Path, saved: dict[str, Any], seed: int) -> None:
    """Put back everything but the model's weights of a full checkpoint (loaded with the model)
    from checkpoint ``path``, whose ``state.pt`` is ``saved``; ``seed`` is the run's."""
    if parts.ema is not None:
        checkpoint.load_model(parts.ema, path / checkpoint.EMA_FILE)
    if is_sharded(path):  # the model's shards and the optimizer's, as the ranks wrote them
        load_sharded(path, parts.model, parts.optimizer)
    else:  # by parameter name, into one process, DDP or FSDP2 alike
        parallel.load_full_optimizer_state(parts.model, parts.optimizer, saved["optimizer"])
    start.continue_schedule(parts.optimizer, parts.scheduler, saved["scheduler"])
    parts.state.load_state_dict(saved)
    rank, world_size = rank_and_world_size()
    ranks = saved["ranks"]
    if len(ranks) == world_size:
        set_rng_state(ranks[rank]["rng"])
        parts.data.load_state_dict(ranks[rank]["data"])
        return
    epoch = ranks[0]["data"]["epoch"] + 1
    logger.warning(
        "checkpoint written by %d processes, resuming with %d: each rank's data position does "
        "not carry over, so the rest of epoch %d is skipped and the data restarts at epoch %d "
        "(resume with %d processes to continue mid-epoch)",
        *(len(ranks), world_size, epoch - 1, epoch, len(ranks)),
    )
    seed_everything(seed * 1000 + rank + parts.state.step)
    parts.data.load_state_dict({"epoch": epoch, "batch": 0})


def optimizer_state_by_name(
    model: nn.Module,
    new_optimizer: Callable[[], torch.optim.Optimizer],
    saved: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """A saved optimizer state keyed by name: as it is, or, from a checkpoint written when they
    held ``optimizer.state_dict()`` (parameters by index), loaded into ``new_optimizer()`` (over
    the still unsharded ``model``) and read back by name."""
    groups = (saved or {}).get("param_groups") or [{}]
    if not any(isinstance(p, int) for group in groups for p in group.get("params", [])):
        return saved
    optimizer = new_optimizer()
    optimizer.load_state_dict(saved)
    return parallel.full_optimizer_state(model, optimizer)
