"""The optimizer and its learning-rate schedule: AdamW with weight-decay groups; warmup, then cosine
or warmup-stable-decay (WSD)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..pattention import Pattention


def param_groups(
    model: nn.Module, weight_decay: float, token_weight_decay: float | None
) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices, not norms, biases, position embeddings or class tokens.

    One rule, as in nanoGPT: parameters with fewer than 2 dims (norms, biases; τ is a buffer) and
    those the model names in ``no_weight_decay()`` are not decayed; Pattention key/value tokens
    get ``token_weight_decay`` (default: ``weight_decay``).
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    tokens = {id(p) for m in model.modules() if isinstance(m, Pattention) for p in m.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "tokens": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in tokens:
            groups["tokens"].append(param)
        elif param.ndim < 2 or name in skip or name.split(".")[-1] in skip:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    decay = {
        "decay": weight_decay,
        "no_decay": 0.0,
        "tokens": weight_decay if token_weight_decay is None else token_weight_decay,
    }
    return [
        {"params": params, "weight_decay": decay[name], "name": name}
        for name, params in groups.items()
        if params
    ]


class WarmupCosine:
    """LR multiplier: linear warmup from 0, then cosine down to ``min_ratio`` at ``total`` steps."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupStableDecay:
    """LR multiplier: linear warmup from 0, constant, then a linear decay to ``min_ratio`` over
    the last ``decay`` of ``total`` steps.

    The stable phase is what makes cooldown branches possible: a checkpoint taken in it can be
    continued with only the decay (``train.branch_from``), so one long run gives annealed models
    at many budgets, each as good as a run scheduled for that budget (WSD matches cosine).
    """

    def __init__(self, warmup: int, total: int, decay: int, min_ratio: float) -> None:
        self.warmup, self.total, self.decay, self.min_ratio = warmup, total, decay, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        decay_start = self.total - self.decay
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, self.decay))
        return 1.0 - (1.0 - self.min_ratio) * progress


def scaled_from_growth(schedule: Callable[[int], float], events: Sequence[Any]) -> Callable:
    """LR multiplier: ``schedule`` times the ``lr_scale`` of every growth event at or before the
    step. A function of the step alone, so a resume or a branch past a growth event gets the
    same rate as the run that went through it (a closure: LambdaLR saves none of its state).
    ``.scales`` lists the (step, lr_scale) pairs, for a resume to tell a growth's rate change
    from a reshaped schedule."""
    scales = [(event.step, event.lr_scale) for event in events if event.lr_scale != 1]

    def multiplier(step: int) -> float:
        return schedule(step) * math.prod(scale for at, scale in scales if step >= at)

    multiplier.scales = scales
    return multiplier


def decay_steps(optim: Any, total_steps: int) -> int:
    """Length of the WSD decay: ``optim.decay_steps``, or the last 20 % of the run."""
    return optim.decay_steps if optim.decay_steps is not None else max(1, round(0.2 * total_steps))


def build_optimizer(
    model: nn.Module, optim: Any, total_steps: int, growth_events: Sequence[Any] = ()
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``param_groups`` and the ``optim.schedule``, as ``optim`` configures, scaled
    from each of ``growth_events`` (``growth.schedule``) on by its ``lr_scale``."""
    optimizer = torch.optim.AdamW(
        param_groups(model, optim.weight_decay, optim.token_weight_decay),
        lr=optim.lr,
        betas=tuple(optim.betas),
    )
    min_ratio = optim.min_lr / optim.lr
    if optim.schedule == "wsd":
        decay = decay_steps(optim, total_steps)
        schedule = WarmupStableDecay(optim.warmup_steps, total_steps, decay, min_ratio)
    else:
        schedule = WarmupCosine(optim.warmup_steps, total_steps, min_ratio)
    if any(event.lr_scale != 1 for event in growth_events):
        schedule = scaled_from_growth(schedule, growth_events)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
