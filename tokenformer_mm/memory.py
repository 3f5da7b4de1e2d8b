"""Activation memory: what autograd keeps alive between a forward and its backward."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_activation_bytes(
    forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()
) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward()`` runs.

    Measured with ``torch.autograd.graph.saved_tensors_hooks``; each storage counts once (views
    of one buffer share it) and the storages of ``exclude`` (typically the parameters, which
    exist anyway) are left out. Device independent, unlike an allocator's peak.
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())
