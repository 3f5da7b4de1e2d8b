"""Training FLOPs of a model, so runs of different sizes are compared at equal compute.

Counted by torch's ``FlopCounterMode`` on one real forward + backward pass (every matmul and
convolution). Fused attention kernels are counted by one convention on every device, PaLM's:
``4·T·S·d`` per sequence forward (QKᵀ and AV) and twice that backward, causal or not. torch's own
formulas for the CUDA kernels count the backward's recomputation, and it has none for the CPU
kernel, so the same model would otherwise count differently on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_ATTENTION_KERNELS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _attention_flops(query: torch.Size, key: torch.Size) -> int:
    """QKᵀ and AV of (..., T, d) queries against (..., S, d) keys: 2 matmuls of 2·T·S·d."""
    *batch, t, d = query
    return 4 * math.prod(batch) * t * key[-2] * d


def _attention_forward(query, key, *_args, out_shape=None, **_kwargs) -> int:
    return _attention_flops(query, key)


def _attention_backward(_grad, query, key, *_args, out_shape=None, **_kwargs) -> int:
    return 2 * _attention_flops(query, key)


def _attention_mapping() -> dict:
    mapping = {}
    for name in _ATTENTION_KERNELS:
        for suffix, formula in (("", _attention_forward), ("_backward", _attention_backward)):
            op = getattr(torch.ops.aten, name + suffix, None)
            if op is not None:  # kernels differ between torch versions
                mapping[op] = formula
    return mapping


def training_flops(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``loss_fn().backward()``: one training step's forward and backward passes."""
    with FlopCounterMode(display=False, custom_mapping=_attention_mapping()) as counter:
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def pattention_flops_per_token(model: nn.Module) -> int:
    """Forward FLOPs per token of all Pattention layers: ``Σ 2·n·(d_in + d_out)``."""
    from .pattention import Pattention

    return sum(
        2 * m.num_tokens * (m.in_features + m.out_features)
        for m in model.modules()
        if isinstance(m, Pattention)
    )
