"""Structured configs shared by every domain's Hydra run (docs/design.md, "The engine").

Hydra merges the YAML files under ``configs/`` into these dataclasses, so a misspelt key or a
value of the wrong type fails before anything is built, with Hydra's own message. Checks that a
type cannot express (a positive batch size, a known precision) live in ``validate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..distributed import STOP_SIGNALS
from ..extras import missing_extra
from ..growth import DEPTH_INITS, INITS
from ..pattention import KINDS

try:
    from omegaconf import MISSING
except ModuleNotFoundError as error:  # the [train] extra
    raise missing_extra(error, "train") from error

PARALLEL = ("ddp", "fsdp")  # train/parallel.py
PRECISIONS = ("auto", "fp32", "bf16")
NONFINITE = ("stop", "skip")  # train/nonfinite.py
SCHEDULES = ("cosine", "wsd")


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine decay or warmup-stable-decay, in optimizer steps."""

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    # Weight decay of the Pattention key/value tokens; None means ``weight_decay``.
    token_weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    schedule: str = "cosine"  # or "wsd": constant after warmup, linear decay at the end
    decay_steps: int | None = None  # wsd: steps of the final decay; None: the last 20 % of the run
    grad_clip: float | None = 1.0


@dataclass
class GrowthEvent:
    """Grow the live model at ``step``: ``factor`` times the parameter tokens of the ``kinds``
    (as in ``grow_model``; 1 keeps them) and ``depth`` times the blocks (``grow_depth``)."""

    step: int = MISSING
    factor: float = 1.0
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    depth: int = 1
    # The run's learning rate times this from ``step`` on: a model with k times the tokens
    # wants about 1/sqrt(k) of the rate (docs/benchmarks.md, "Learning rate across token counts")
    lr_scale: float = 1.0
    # Exact inits keep τ = sqrt(n_small); over this many steps after ``step`` τ moves to the
    # grown layers' own sqrt(n) (growth.tau: smaller loss at equal FLOPs, docs/growth.md)
    tau_ramp: int = 0


@dataclass
class GrowthConfig:
    """Growth inside a run: a schedule for the live model, or a warm start from a smaller run."""

    schedule: list[GrowthEvent] = field(default_factory=list)
    init_from: str | None = None  # a checkpoint directory (or model.safetensors) of a smaller run
    init: str = "exact"  # one of growth.INITS, as in grow_model
    depth_init: str = "exact"  # one of growth.DEPTH_INITS, as in grow_depth: "exact" or "stack"
    perturbation: float = 1e-2  # init=perturbed: the new keys' std, relative to the key init


@dataclass
class TrainConfig:
    """The loop: what the engine does, whatever the domain."""

    steps: int = 1000
    batch_size: int = 64  # per process, per optimizer step (before accumulation)
    accum_steps: int = 1
    precision: str = "auto"  # auto: bf16 autocast on a GPU that supports it, else fp32
    tf32: bool = True  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores
    # Across ranks under torchrun: "ddp" (a replica per rank) or "fsdp" (FSDP2: parameters,
    # gradients and optimizer state sharded per block; sharded checkpoints)
    parallel: str = "ddp"
    compile: bool = False  # torch.compile the training forward (recompiled after growth)
    compile_backend: str = "inductor"  # torch.compile's backend (e.g. aot_eager: no codegen)
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    ema_decay: float | None = None  # e.g. 0.9998; evaluation then uses the EMA weights
    log_every: int = 10
    device: str = "auto"  # auto: the local rank's GPU when CUDA is available, else cpu
    # A checkpoint directory of another run to continue from, in this run_dir: its weights,
    # optimizer, schedule position, step and data position. With optim.schedule=wsd and
    # train.steps = its step + optim.decay_steps this is a cooldown branch of a stable phase.
    branch_from: str | None = None
    # Recompute each block in backward (the model's set_grad_checkpointing): activations of one
    # block at a time, for the large configs; FLOPs are still counted without the recompute.
    grad_checkpointing: bool = False
    # A shard that yields fewer samples than its _info.json declares stops the run (else: a
    # warning naming it; the counts are in metrics.csv as data/* either way).
    strict_data: bool = False
    # A step whose loss or gradient norm is not finite: "stop" the run there (an error naming
    # the newest checkpoint, which always holds finite weights) or "skip" its update (counted in
    # metrics.csv as nonfinite/skipped; nonfinite_patience such steps in a row stop the run).
    nonfinite: str = "stop"
    nonfinite_patience: int = 10
    # Signals that stop the run cleanly: every rank finishes its step, one checkpoint is written,
    # exit code 75 (resume=true continues); a second signal exits at once. []: none.
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])


@dataclass
class AdaptConfig:
    """A token adapter trained on a trained model, the rest frozen (``tokenformer_mm.adapters``)."""

    num_tokens: int = 0  # tokens appended per chosen layer; 0: no adapter
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    blocks: list[int] | None = None  # block indices; null: every block
    init: str = "exact"  # zero keys (the model unchanged at the start) or "perturbed"
    modules_to_save: list[str] = field(default_factory=list)  # trained beside: [head], norms
    name: str = "adapter"
    base: str | None = None  # the trained model: a run, a checkpoint dir or a .safetensors


@dataclass
class RunConfig:
    """Fields every domain's run has; a domain adds ``model`` and ``data``."""

    domain: str = MISSING
    run_dir: str = MISSING
    seed: int = 0
    resume: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


def validate(cfg: Any) -> None:
    """Checks a type cannot express; raises ``ValueError`` naming the key and the allowed values."""
    train, optim, growth = cfg.train, cfg.optim, cfg.growth
    positive = {
        "train.steps": train.steps,
        "train.batch_size": train.batch_size,
        "train.accum_steps": train.accum_steps,
        "train.eval_every": train.eval_every,
        "train.checkpoint_every": train.checkpoint_every,
        "train.keep_checkpoints": train.keep_checkpoints,
        "train.log_every": train.log_every,
        "train.nonfinite_patience": train.nonfinite_patience,
        "optim.lr": optim.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ValueError(f"{key} must be positive, got {value}")
    if train.parallel not in PARALLEL:
        raise ValueError(f"train.parallel must be one of {PARALLEL}, got {train.parallel!r}")
    if train.parallel == "fsdp" and train.ema_decay is not None:
        raise ValueError(
            "train.ema_decay is not supported with train.parallel=fsdp (the EMA would be a full "
            "replica per rank); set train.ema_decay=null or use train.parallel=ddp"
        )
    if train.nonfinite not in NONFINITE:
        raise ValueError(f"train.nonfinite must be one of {NONFINITE}, got {train.nonfinite!r}")
    unknown = [name for name in train.stop_signals if name not in STOP_SIGNALS]
    if unknown:
        raise ValueError(
            f"train.stop_signals must be a subset of {STOP_SIGNALS}, got {list(unknown)}"
        )
    if train.precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {train.precision!r}")
    if optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {optim.warmup_steps}")
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
    if optim.decay_steps is not None and not 0 < optim.decay_steps <= train.steps:
        raise ValueError(
            f"optim.decay_steps must be in (0, train.steps={train.steps}] or null, got "
            f"{optim.decay_steps}"
        )
    adapt = cfg.adapt
    if adapt.num_tokens < 0:
        raise ValueError(f"adapt.num_tokens must be >= 0 (0: no adapter), got {adapt.num_tokens}")
    if adapt.modules_to_save and not adapt.num_tokens:
        raise ValueError(
            f"adapt.modules_to_save={list(adapt.modules_to_save)} trains modules beside an "
            "adapter's tokens: set adapt.num_tokens > 0 (without it the whole model trains)"
        )
    if adapt.num_tokens and (growth.schedule or growth.init_from):
        raise ValueError(
            "adapt trains tokens appended to a frozen model, growth changes the model itself: "
            "set adapt.num_tokens=0, or growth.schedule=[] and growth.init_from=null"
        )
    if train.branch_from and growth.init_from:
        raise ValueError(
            "train.branch_from and growth.init_from both say where the run starts; give one "
            f"(got {train.branch_from!r} and {growth.init_from!r})"
        )
    if train.ema_decay is not None and not 0 < train.ema_decay < 1:
        raise ValueError(f"train.ema_decay must be in (0, 1) or null, got {train.ema_decay}")
    if growth.init not in INITS:
        raise ValueError(f"growth.init must be one of {INITS}, got {growth.init!r}")
    if growth.init == "perturbed" and not 0 < growth.perturbation < math.inf:
        raise ValueError(
            f"growth.perturbation must be a finite positive number, got {growth.perturbation}"
        )
    steps = [event.step for event in growth.schedule]
    if steps != sorted(set(steps)) or any(not 0 < s < train.steps for s in steps):
        raise ValueError(
            f"growth.schedule steps must be increasing and inside (0, train.steps="
            f"{train.steps}), got {steps}"
        )
    if growth.depth_init not in DEPTH_INITS:
        raise ValueError(
            f"growth.depth_init must be one of {DEPTH_INITS}, got {growth.depth_init!r}"
        )
    for event in growth.schedule:
        if (
            not 1 <= event.factor < math.inf
            or event.depth < 1
            or (event.factor == 1 and event.depth == 1)
        ):
            raise ValueError(
                f"growth.schedule at step {event.step}: factor (tokens, a finite number >= 1) "
                f"and depth (blocks, an int >= 1) must grow something, got "
                f"factor={event.factor}, depth={event.depth}"
            )
        if not 0 < event.lr_scale < math.inf:
            raise ValueError(
                f"growth.schedule at step {event.step}: lr_scale multiplies the learning rate "
                f"from that step on and must be finite and positive, got {event.lr_scale}"
            )
        if not isinstance(event.tau_ramp, int) or event.tau_ramp < 0:
            raise ValueError(
                f"growth.schedule at step {event.step}: tau_ramp is a number of steps (0: τ "
                f"kept as the exact inits keep it), got {event.tau_ramp!r}"
            )
        if event.tau_ramp and growth.init == "official":
            raise ValueError(
                f"growth.schedule at step {event.step}: tau_ramp moves τ after exact growth; "
                "growth.init=official sets τ = sqrt(n) at once: drop one of them"
            )
        ramping = [e.step for e in growth.schedule if e.step < event.step <= e.step + e.tau_ramp]
        if event.depth > 1 and ramping:
            raise ValueError(
                f"growth.schedule at step {event.step}: a depth growth inside the τ ramp of the "
                f"event at step {ramping[0]} would renumber its layers; end the ramp first"
            )
        unknown = [kind for kind in event.kinds if kind not in KINDS]
        if unknown or not event.kinds:
            raise ValueError(
                f"growth.schedule kinds must be a non-empty subset of {KINDS}, got "
                f"{list(event.kinds)} at step {event.step}"
            )
