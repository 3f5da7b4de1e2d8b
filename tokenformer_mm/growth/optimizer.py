"""An optimizer after growth: onto the new Parameters, its state grown, new rows seeded.

The seeding is ordinary optimizer state: a grown parameter's state gets ``new_rows_from`` (the
first new row), which ``seed_new_rows`` consumes at the next step that gives the parameter a
gradient. It is saved with ``optimizer.state_dict()`` and moves by parameter name with the rest
of the state (FSDP2), so a run checkpointed between growth and that step resumes exactly.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
from torch import nn

from .report import GrowthReport

NEW_ROWS = "new_rows_from"  # the optimizer-state key of the first row still to be seeded
# The order of each state tensor in the gradient (Adam(W), SGD, RMSprop, Adan, Adamax, AdaBelief,
# Adagrad): when μP growth multiplies a value row by f, its gradient is divided by f, so these
# moments are divided by f ** order.
MOMENT_ORDER = {
    "exp_avg": 1,
    "momentum_buffer": 1,
    "grad_avg": 1,
    "exp_avg_diff": 1,
    "exp_inf": 1,
    "exp_avg_sq": 2,
    "max_exp_avg_sq": 2,
    "square_avg": 2,
    "exp_avg_var": 2,
    "sum": 2,
}


def successors(reports: tuple[GrowthReport, ...]) -> dict[nn.Parameter, nn.Parameter]:
    """Each replaced Parameter to its newest successor, over several growths in order."""
    latest: dict[nn.Parameter, nn.Parameter] = {}
    for report in reports:
        for first, current in latest.items():  # values only: the keys stay as they are
            latest[first] = report.replaced.get(current, current)
        for old, new in report.replaced.items():
            latest.setdefault(old, new)
    if any(new in latest for new in latest.values()):
        raise ValueError(
            "the growth reports are out of order: a later growth replaced a Parameter that an "
            "earlier one made; pass them in the order the growths happened"
        )
    return latest


@torch.no_grad()
def grow_optimizer_state(optimizer: torch.optim.Optimizer, *reports: GrowthReport) -> int:
    """Move an optimizer over to the Parameters the growths of ``reports`` made, and grow their
    state (``grow_model(..., optimizer=optimizer)`` does this itself).

    Its references to replaced Parameters become the new ones (in ``param_groups`` and
    ``state``). Every state tensor shaped like the parameter's old shape (Adam/AdamW
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``) keeps its old rows
    and gets zero rows for the new tokens, so the old rows continue exactly as if nothing grew.

    New rows of an Adam-style state would otherwise get a kick: they share the parameter's step
    count, whose bias correction is ~1 late in training, so zero moments make their first update
    ``(1 - β1) / sqrt(1 - β2)`` ≈ 3.2x a fresh AdamW's (β 0.9, 0.999). Instead their second
    moment is seeded from their own first gradient at the next step (``seed_new_rows``, run by a
    step pre-hook registered here), so that the bias-corrected estimate equals that gradient
    squared, as a fresh AdamW's does; the first moment starts at zero and builds up, a short
    warm-up of the new rows (``docs/design.md``, "Growth"). Returns the number of state tensors
    grown.

    The old rows of a μP layer's values, multiplied by ``f`` (``GrowthReport.rescaled``), get
    their moments divided by ``f ** MOMENT_ORDER``: Adam's update of those rows keeps its
    direction and size, which the smaller multiplier turns into the grown layer's rate.
    """
    moved = successors(reports)
    rescaled = {}
    for report in reports:
        for param, (rows, factor) in report.rescaled.items():
            param = moved.get(param, param)
            rescaled[param] = (rows, rescaled.get(param, (rows, 1.0))[1] * factor)
    for old, param in moved.items():  # refused before anything changes
        if param in rescaled:
            _check_moment_keys(optimizer.state.get(old, optimizer.state.get(param, {})))
    grown = 0
    for group in optimizer.param_groups:
        for i, old in enumerate(group["params"]):
            param = moved.get(old, old)
            if param is not old:
                group["params"][i] = param
                if old in optimizer.state:
                    optimizer.state[param] = optimizer.state.pop(old)
            state = optimizer.state.get(param, {})
            for key, value in list(state.items()):
                if not torch.is_tensor(value) or value.shape == param.shape or value.dim() == 0:
                    continue
                if (
                    value.dim() != param.dim()
                    or value.shape[1:] != param.shape[1:]
                    or value.shape[0] > param.shape[0]
                ):
                    raise ValueError(
                        f"optimizer state {key!r} of shape {tuple(value.shape)} cannot grow to the "
                        f"parameter shape {tuple(param.shape)}"
                    )
                padded = value.new_zeros(param.shape)
                padded[: value.shape[0]] = value
                state[key] = padded
                grown += 1
                if key == "exp_avg_sq" and "betas" in group:
                    state[NEW_ROWS] = min(value.shape[0], state.get(NEW_ROWS, value.shape[0]))
            if param in rescaled:
                _rescale_moments(state, *rescaled[param])
    if any(NEW_ROWS in state for state in optimizer.state.values()):
        _seed_at_next_step(optimizer)
    return grown


def _check_moment_keys(state: dict[str, Any]) -> None:
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0 and key not in MOMENT_ORDER:
            raise ValueError(
                f"optimizer state {key!r} cannot follow a μP growth's rescaled value rows; "
                f"known: {sorted(MOMENT_ORDER)}; grow without the optimizer and build a new one"
            )


def _rescale_moments(state: dict[str, Any], rows: int, factor: float) -> None:
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0:
            value[:rows] /= factor ** MOMENT_ORDER[key]


_SEEDED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()  # optimizers with the hook


def _seed_new_rows_hook(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    seed_new_rows(opt)


def _seed_at_next_step(optimizer: torch.optim.Optimizer) -> None:
    """One step pre-hook per optimizer that runs ``seed_new_rows`` (a no-op once no row
    waits). It stays: a hook that removed itself would change the hooks torch is looping over,
    which breaks the step as soon as the optimizer has a second one."""
    if optimizer not in _SEEDED:
        optimizer.register_step_pre_hook(_seed_new_rows_hook)
        _SEEDED.add(optimizer)


@torch.no_grad()
def seed_new_rows(optimizer: torch.optim.Optimizer) -> int:
    """Seed the second moment of every grown parameter's new rows from its gradient, just
    before ``optimizer.step()``, so that the step's bias-corrected estimate is ``grad**2``.

    A training loop whose optimizer may hold seeding state it did not get through
    ``grow_optimizer_state`` in this process (loaded from a checkpoint, or rebuilt from a full
    state) calls this before each step; it is a no-op otherwise. Returns how many parameters
    still wait (no gradient yet).
    """
    waiting = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if NEW_ROWS not in state:
                continue
            if param.grad is None:
                waiting += 1
                continue
            beta2 = float(group["betas"][1])
            step = float(state["step"]) + 1  # the step about to be taken
            # Adam then sets v = β2 v + (1 - β2) g², and divides by 1 - β2^step.
            weight = max(0.0, (1 - beta2**step - (1 - beta2)) / beta2)
            row = int(state.pop(NEW_ROWS))
            second = rows_from(state["exp_avg_sq"], row)
            second.copy_(weight * rows_from(param.grad, row).to(second.dtype).square())
    return waiting


def rows_from(tensor: torch.Tensor, row: int) -> torch.Tensor:
    """The rows ``row:`` (global index) of ``tensor`` this process holds, as a writable view: all
    of them for a plain tensor, those of its shard for an FSDP2 DTensor (sharded by rows)."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # no DTensor exists before its import
    if dtensor is None or not isinstance(tensor, dtensor.DTensor):
        return tensor[row:]
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if tuple(tensor.placements) != (Shard(0),):
        raise ValueError(f"expected a tensor sharded by rows (Shard(0)), got {tensor.placements}")
    _, offset = compute_local_shape_and_global_offset(
        tensor.shape, tensor.device_mesh, tensor.placements
    )
    return tensor.to_local()[max(0, row - offset[0]) :]


def split_new_rows(state: dict[str, Any]) -> dict[str, int]:
    """Take growth's new-row seeding (``NEW_ROWS``) out of a name-keyed optimizer state, which
    torch's loader would refuse (a key a fresh optimizer's state lacks); by parameter name."""
    entries = state["state"].items()
    return {name: entry.pop(NEW_ROWS) for name, entry in entries if NEW_ROWS in entry}


def restore_new_rows(
    model: nn.Module, optimizer: torch.optim.Optimizer, rows: dict[str, int]
) -> None:
    """Put ``split_new_rows``' seeding back into the loaded ``optimizer``."""
    for name, param in model.named_parameters():
        if name in rows:
            optimizer.state[param][NEW_ROWS] = int(rows[name])
