"""References the tests and benchmarks measure the library against (not part of the library).

``official_pattention`` is the official torch code's formula, as it computes it;
``saved_activation_bytes`` measures what autograd keeps alive between a forward and its backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from tokenformer_mm.theta import NORMS


def official_pattention(
    x: torch.Tensor, key_tokens: torch.Tensor, value_tokens: torch.Tensor, norm: str
) -> torch.Tensor:
    """Pattention as the official torch code computes it: a reference for tests and benchmarks.

    It multiplies the scores by an all-ones ``[L, S]`` mask, divides by the unclamped norm, takes
    τ from the *current* token count and calls dropout (p = 0) in every mode. The values equal
    ``Pattention`` with τ = sqrt(n) away from all-zero rows; time and memory do not.
    """
    scores = x @ key_tokens.transpose(-2, -1) * 1.0
    scores *= torch.ones(x.shape[-2], key_tokens.shape[0], dtype=x.dtype, device=x.device)
    n = scores.shape[-1]
    if norm == "l2_norm_gelu":
        weights = F.gelu(scores / torch.norm(scores, p=2, dim=-1, keepdim=True) * math.sqrt(n))
    elif norm == "gelu_l2_norm":
        activated = F.gelu(scores)
        weights = activated / torch.norm(activated, p=2, dim=-1, keepdim=True) * math.sqrt(n)
    elif norm == "softmax":
        exp = torch.exp(scores)
        weights = exp / torch.norm(exp, p=1, dim=-1, keepdim=True) * n
    else:
        raise ValueError(f"unknown Pattention norm {norm!r}; expected one of {NORMS}")
    return torch.dropout(weights, 0.0, train=True) @ value_tokens


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
