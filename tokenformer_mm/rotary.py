"""Rotary position embeddings, NeoX style: the tables are made once per forward, by the model.

A model with rotary blocks (the language model, the CLIP text tower) computes ``(cos, sin)`` for
the positions of its input once (``rotary_tables``) and passes them to every block; the
KV-cache path passes the tables of the new positions. Only a block called on its own, without
tables, makes them itself.
"""

from __future__ import annotations

import torch

Rotary = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (T, rotary_dims)


def rotary_dims(head_dim: int, rotary_pct: float) -> int:
    """How many of a head's dims rotate: ``rotary_pct`` of them, rounded down to pairs."""
    if not 0.0 <= rotary_pct <= 1.0:
        raise ValueError(f"rotary_pct must be in [0, 1], got {rotary_pct}")
    dims = int(head_dim * rotary_pct)
    dims -= dims % 2  # rotary rotates pairs of dims
    if rotary_pct > 0 and dims == 0:
        raise ValueError(
            f"rotary_pct={rotary_pct} of head_dim={head_dim} rotates no dims; raise it or use 0"
        )
    return dims


def rotary_tables(positions: torch.Tensor, dims: int, base: float = 10000.0) -> Rotary:
    """fp32 cos and sin (T, dims) for integer ``positions`` (T,); NeoX halves, not interleaved."""
    exponents = torch.arange(0, dims, 2, device=positions.device).float() / dims
    inv_freq = 1.0 / (base**exponents)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, dims / 2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, dims)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` (B, nh, T, hs); the rest pass through.

    The tables are cast to ``x``'s dtype (bf16 under autocast), as the product would be.
    """
    dims = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x_rot, x_pass = x[..., :dims], x[..., dims:]
    half = dims // 2
    rotated_half = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    return torch.cat([x_rot * cos + rotated_half * sin, x_pass], dim=-1)
