"""The engine's start-up steps that need no Trainer: where a run starts from, whether it may
write, its precision, the FLOPs it counts, where its LR schedule stands."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_layout import CHECKPOINTS_DIR, newest_checkpoint
from ..flops import training_flops
from . import checkpoint
from .batches import data_report, to_device
from .rng import rng_state, set_rng_state
from .tasks import Task

logger = logging.getLogger(__name__)


def resume_checkpoint(run_dir: Path, resume: bool, branch_from: str | None) -> Path | None:
    """This run's newest checkpoint (``resume``), else ``train.branch_from``'s, else None."""
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    found = newest_checkpoint(ckpt_dir)
    if found is not None and not resume:
        raise ValueError(
            f"{run_dir} already holds checkpoints ({found.name}); pass resume=true to "
            "continue that run, or choose another run_dir"
        )
    if resume:
        found = checkpoint.newest_intact(ckpt_dir)
        if found is None:
            raise ValueError(
                f"resume=true, but {ckpt_dir} holds no checkpoint: check run_dir (a "
                "typo starts nothing), or drop resume=true to start a new run there"
            )
    if found is None and branch_from:
        found = branch_point(Path(branch_from))
    return found


def branch_point(path: Path) -> Path:
    """The checkpoint ``train.branch_from`` names: a checkpoint directory, or a run's
    ``checkpoints/`` folder or run directory (then its newest checkpoint)."""
    newest = newest_checkpoint(path) if not (path / checkpoint.STATE_FILE).is_file() else None
    path = newest if newest is not None else path
    if not (path / checkpoint.STATE_FILE).is_file():
        raise ValueError(
            f"train.branch_from={str(path)!r} is not a checkpoint: expected a directory with "
            f"{checkpoint.STATE_FILE} (e.g. <run>/checkpoints/step_000400) or a run directory"
        )
    problem = checkpoint.damage(path)
    if problem is not None:
        raise ValueError(f"train.branch_from: {problem}; branch from another checkpoint")
    logger.info("branching from %s", path)
    return path


def continue_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scheduler_state: dict[str, Any],
) -> None:
    """Put the LR schedule at a saved position. The position, not the saved schedule's
    shape: LambdaLR would restore our schedule objects' fields too, and a branch (or a
    resume with other train.steps or optim.decay_steps) follows this run's config."""
    lambdas = [None] * len(scheduler.lr_lambdas)  # None: keep ours
    base_lrs = list(scheduler.base_lrs)  # this run's optim.lr (a resume may lower it)
    scheduler.load_state_dict({**scheduler_state, "lr_lambdas": lambdas})
    scheduler.base_lrs = base_lrs
    for group, base_lr, schedule in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * schedule(scheduler.last_epoch)
    saved, now = scheduler_state.get("_last_lr"), optimizer.param_groups[0]["lr"]
    step, scales = scheduler.last_epoch, getattr(scheduler.lr_lambdas[0], "scales", ())
    growing = math.prod(scale for at, scale in scales if at == step)  # the growth at this step
    if saved and not math.isclose(saved[0] * growing, now, rel_tol=1e-3):
        logger.warning(
            "the learning rate at step %d was %.3g when the checkpoint was written and is %.3g "
            "under this run's schedule (%.3gx): a changed train.steps (or warm-up, decay, lr) "
            "reshapes the schedule around the step it resumes at. To go on without a jump, "
            "train with optim.schedule=wsd and continue from a checkpoint in its stable phase "
            "(train.branch_from=...; the README's 'cooldown branches')",
            step, saved[0], now, now / saved[0] if saved[0] else math.inf,
        )  # fmt: skip


def measure_flops(
    model: nn.Module, task: Task, eval_loader: Any, device: torch.device, grad_checkpointing: bool
) -> float:
    """Training FLOPs per item (image, token) of ``model``, on one validation item.

    Measured on the bare model (DDP's hooks expect DDP's own forward). Every RNG is restored
    afterwards: measuring must not shift what an exact resume replays.
    """
    batch = next(iter(eval_loader), None)
    if batch is None:
        raise ValueError(
            f"the validation loader yields no sample ({data_report(eval_loader)}); "
            "check data.val_shards"
        )
    two = to_device({k: v[:2] for k, v in batch.items()}, device)  # even: mixup needs it
    saved_rng = rng_state()
    set_grad_checkpointing(model, False)  # model FLOPs: the recompute is not counted
    flops = training_flops(model, lambda: task.training_loss(model, two))
    set_grad_checkpointing(model, grad_checkpointing)
    set_rng_state(saved_rng)
    per_item = flops / task.batch_items(two)
    logger.info("training FLOPs per %s: %.4g", task.unit, per_item)
    return per_item


def set_grad_checkpointing(model: nn.Module, enable: bool) -> None:
    if not hasattr(model, "set_grad_checkpointing"):
        if enable:
            raise ValueError(
                f"train.grad_checkpointing=true, but {type(model).__name__} has no "
                "set_grad_checkpointing(); set it to false"
            )
        return
    model.set_grad_checkpointing(enable)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or ``auto`` on a GPU that supports it (never fp16 silently)."""
    supported = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "bf16" and not supported:
        raise ValueError(
            f"train.precision=bf16, but {torch.cuda.get_device_name(device)} has no bf16 support; "
            "use train.precision=fp32 (or auto)"
        )
    return precision == "bf16" or (precision == "auto" and device.type == "cuda" and supported)


def check_writable(run_dir: Path) -> None:
    """Fail before any work when ``run_dir`` cannot be created or written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise ValueError(
            f"run_dir={str(run_dir)!r} cannot be written ({error}); choose another run_dir or "
            "fix its permissions"
        ) from error


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 matmuls and convolutions on CUDA (``train.tf32``)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def check_branch(path: Path, ckpt_dir: Path, step: int, steps: int) -> None:
    """A branch (a checkpoint of another run) must leave steps to train."""
    if path.resolve().parent != ckpt_dir.resolve() and step >= steps:
        raise ValueError(
            f"train.branch_from={str(path)!r} is at step {step}, but train.steps={steps}: a "
            "branch continues that run, so raise train.steps"
        )
