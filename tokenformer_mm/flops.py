"""Training FLOPs of a model, so runs of different sizes are compared at equal compute.

Counted by torch's ``FlopCounterMode`` on one real forward + backward pass (every matmul,
convolution and attention kernel it knows). Attention kernels it cannot see (the CPU SDPA
kernel) are added from the blocks' shapes: ``4·T²·d`` per sequence forward (QKᵀ and AV), three
times that for training, the usual convention (PaLM's MFU), causal or not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .block import TokenformerBlock


def training_flops(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``loss_fn().backward()``: one training step's forward and backward passes."""
    shapes: list[torch.Size] = []
    hooks = [
        m.register_forward_hook(lambda _m, _args, out: shapes.append(out.shape))
        for m in model.modules()
        if isinstance(m, TokenformerBlock)
    ]
    try:
        with FlopCounterMode(display=False) as counter:
            loss_fn().backward()
    finally:
        for hook in hooks:
            hook.remove()
    model.zero_grad(set_to_none=True)
    total = counter.get_total_flops()
    counted_ops = {str(op) for op in counter.get_flop_counts().get("Global", {})}
    if not any("scaled_dot_product" in op for op in counted_ops):
        total += sum(3 * 4 * b * t * t * d for b, t, d in shapes)
    return int(total)


def pattention_flops_per_token(model: nn.Module) -> int:
    """Forward FLOPs per token of all Pattention layers, ``Σ 2·n·(d_in + d_out)`` (DESIGN §1)."""
    from .pattention import Pattention

    return sum(
        2 * m.num_tokens * (m.in_features + m.out_features)
        for m in model.modules()
        if isinstance(m, Pattention)
    )
