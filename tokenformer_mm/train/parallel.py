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
from collections.abc import Iterator
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

from ..growth import block_containers

_FULL = StateDictOptions(full_state_dict=True)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard(model: nn.Module, device: torch.device, world_size: int, bf16: bool) -> None:
    """FSDP2 in place: each Tokenformer block one unit (its all-gather overlaps the previous
    block's compute), then the rest of the model (embeddings, norm, head) as the root unit.

    Under bf16 the gathered parameters are bf16 and gradients reduce in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
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
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter name, whole tensors, on every rank."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """``full_optimizer_state``'s output into ``optimizer`` (each rank keeps its shard)."""
    set_optimizer_state_dict(model, optimizer, state, options=_FULL)
