"""How the engine spreads a model over ranks: DDP (replicas) or FSDP2 (sharded parameters).

``train.parallel=ddp`` keeps a full replica per rank and all-reduces gradients;
``train.parallel=fsdp`` shards every block's parameters, gradients and optimizer state over the
ranks with ``torch.distributed.fsdp.fully_shard`` (docs/design.md, "The engine"). Everything
that must see whole tensors (growth, evaluation, a 1-process export) works on a *full* copy:
``full_model_state`` / ``full_optimizer_state`` gather them (FQN-keyed, the same on every rank),
``load_full_optimizer_state`` scatters them back into a sharded optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..growth import block_containers, load_resized
from ..growth.optimizer import restore_new_rows, split_new_rows

_FULL = StateDictOptions(full_state_dict=True)


def shard(model: nn.Module, device: torch.device, world_size: int) -> None:
    """FSDP2 in place: each Tokenformer block one unit (its all-gather overlaps the previous
    block's compute), then the rest of the model (embeddings, norm, head) as the root unit.

    Parameters stay fp32 when gathered and gradients reduce in fp32; bf16 comes from the
    engine's autocast, as under DDP, so the residual stream and the norms' statistics keep the
    precision they have there (a bf16 ``param_dtype`` would halve the all-gather's bytes but
    run the residual stream in bf16: other numbers than a DDP or 1-process run).
    """
    from torch.distributed.device_mesh import init_device_mesh

    scalars = [name for name, p in model.named_parameters() if p.dim() == 0]
    if scalars:
        raise ValueError(
            f"train.parallel=fsdp cannot shard the 0-dim parameters {scalars} of "
            f"{type(model).__name__} (FSDP2 shards by rows; e.g. open_clip's logit_scale): use "
            "train.parallel=ddp for this model"
        )
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for _, blocks in block_containers(model):
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` (one device per process)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients in this backward (``enabled``) or only accumulate them (DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync``): accumulation syncs once per step."""
    module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper hides DDP's no_sync
    if enabled:
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor's full value (e.g. the gradient norm FSDP2's clipping returns)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on every rank (gathered from the shards under FSDP2)."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter name, whole tensors, on every rank.

    Parameters without state (new blocks of a depth growth, before their first step) are not
    in it."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """``full_optimizer_state``'s output into ``optimizer`` (each rank keeps its shard).

    A parameter the state has nothing for starts fresh, as in a plain optimizer: the loader
    would otherwise give it the zero state of its own initialising step (``step`` 1), and its
    first update would not be a fresh AdamW's."""
    rows = split_new_rows(state)
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    for name, param in model.named_parameters():
        if name not in state["state"]:
            optimizer.state.pop(param, None)
    restore_new_rows(model, optimizer, rows)


def full_replica(model: nn.Module, empty: nn.Module) -> nn.Module:
    """``empty`` (a model of the task at its initial size, uninitialised) holding the whole
    state of the sharded ``model``, on every rank."""
    load_resized(empty, full_model_state(model))
    return empty


OptimizerFactory = Callable[[nn.Module], tuple[torch.optim.Optimizer, Any]]


def gathered(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    empty: nn.Module,
    make_optimizer: OptimizerFactory,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """An unsharded copy of a sharded model (in ``empty``) and an optimizer over it holding the
    whole state of ``optimizer`` (new rows still waiting for their seeding included)."""
    optimizer_state = full_optimizer_state(model, optimizer)
    replica = full_replica(model, empty)
    full_optimizer, _ = make_optimizer(replica)
    load_full_optimizer_state(replica, full_optimizer, optimizer_state)
    return replica, full_optimizer


def resharded(
    model: nn.Module,
    full_optimizer: torch.optim.Optimizer,
    device: torch.device,
    world_size: int,
    make_optimizer: OptimizerFactory,
) -> tuple[torch.optim.Optimizer, Any]:
    """Shard ``model`` (a whole one, e.g. grown on ``gathered``'s copy) and give it a new
    optimizer and schedule holding ``full_optimizer``'s state; the schedule is at its start."""
    optimizer_state = full_optimizer_state(model, full_optimizer)
    shard(model, device, world_size)
    optimizer, scheduler = make_optimizer(model)
    load_full_optimizer_state(model, optimizer, optimizer_state)
    return optimizer, scheduler
