"""The Tokenformer block shared by the image and the text tower (docs/design.md, "The block").

Pre-norm residual block without biases, every projection a Pattention::

    h = x + proj(attention(q(ln1(x)), k(ln1(x)), v(ln1(x))))
    y = h + ffn(ln2(h))

Token-token attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
GPU), causal for language and bidirectional for vision. Tensors are ``[batch, seq, dim]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale
from torch import nn

from .parametrization import base_tokens
from .pattention import Pattention, pattention_group
from .rotary import Rotary, apply_rotary, rotary_dims, rotary_tables


class TokenformerBlock(nn.Module):
    """One Tokenformer layer: Pattention q/k/v/proj around SDPA, then one FFN Pattention.

    Args:
        dim: token width.
        num_heads: attention heads; ``dim`` must be divisible by it.
        qkv_tokens: parameter tokens of each of the q, k and v Pattentions.
        proj_tokens: parameter tokens of the output projection.
        ffn_tokens: parameter tokens of the FFN (one Pattention; theta is its nonlinearity).
        causal: causal token-token attention (language) or bidirectional (vision).
        rotary_pct: fraction of each head's dims that get NeoX rotary embeddings (0 disables).
        rotary_base: rotary frequency base.
        norm: the Pattention ``theta`` (see ``pattention.NORMS``).
        token_dropout: dropout on every Pattention's ``theta(s)``.
        attn_dropout: dropout on the token-token attention weights.
        drop_path: stochastic depth on both residual branches.
        depth: number of blocks in the model, for the "wang init" of the value tokens.
        eps: epsilon of the non-parametric LayerNorms.
        key_init: how every Pattention's key tokens start (``parametrization.KEY_INITS``).
        init_values: LayerScale (CaiT; timm's ViT ``init_values``): each residual branch times a
            learnable per-channel scale that starts at this value; 0 or None (default) for none.
        parametrization: ``"standard"`` (default), the paper's math, or ``"mup"``: every
            Pattention's values scaled by ``base / n`` with ``base`` = ``dim`` (q/k/v/proj) or
            ``4 · dim`` (FFN), so one learning rate fits every token count
            (docs/design.md, "Learning rate across token counts").
        device, dtype: where and in which dtype the parameters are created.

    ``block(x)`` maps (B, T, dim) to (B, T, dim), so blocks compose in ``nn.Sequential``;
    ``forward_cached`` adds incremental decoding for the language tower. A model of rotary
    blocks passes the rotary tables of its positions (``rotary.rotary_tables``, made once per
    forward) as ``rotary``; without them a rotary block makes its own.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_tokens: int,
        proj_tokens: int,
        ffn_tokens: int,
        causal: bool = False,
        rotary_pct: float = 0.0,
        rotary_base: float = 10000.0,
        norm: str = "l2_norm_gelu",
        token_dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        depth: int = 1,
        eps: float = 1e-5,
        key_init: str | float = "fan_in",
        init_values: float | None = None,
        parametrization: str = "standard",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        base_tokens(parametrization, "ffn", dim)  # checked before anything is built
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(
                f"dim={dim} must be divisible by a positive num_heads, got {num_heads}"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.causal = causal
        self.rotary_dims = rotary_dims(dim // num_heads, rotary_pct)
        self.rotary_base = rotary_base
        self.attn_dropout = attn_dropout

        def pattention(n_in: int, n_out: int, tokens: int, kind: str) -> Pattention:
            return Pattention(
                n_in,
                n_out,
                tokens,
                norm=norm,
                dropout=token_dropout,
                depth=depth,
                kind=kind,
                key_init=key_init,
                base_tokens=base_tokens(parametrization, kind, dim),
                device=device,
                dtype=dtype,
            )

        self.ln1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.q = pattention(dim, dim, qkv_tokens, "qkv")
        self.k = pattention(dim, dim, qkv_tokens, "qkv")
        self.v = pattention(dim, dim, qkv_tokens, "qkv")
        self.proj = pattention(dim, dim, proj_tokens, "proj")
        self.ln2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = pattention(dim, dim, ffn_tokens, "ffn")
        self.ls1, self.ls2 = (
            LayerScale(dim, init_values, device=device, dtype=dtype)
            if init_values
            else nn.Identity()
            for _ in range(2)
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @torch.no_grad()
    def zero_residual_branches(self) -> None:
        """``proj`` and FFN value tokens to zero: both branches add 0, the block is the identity.
        It trains: the zero values get gradients at the first step, the keys once they moved."""
        self.proj.value_tokens.zero_()
        self.ffn.value_tokens.zero_()

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        rotary: Rotary | None = None,
    ) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim). ``key_padding_mask`` (B, T) is True where a token is real;
        ``rotary``: the (cos, sin) tables of the T positions."""
        return self._forward(x, key_padding_mask, None, rotary)[0]

    def forward_cached(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_padding_mask: torch.Tensor | None = None,
        rotary: Rotary | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Incremental decoding: ``x`` (B, T, dim) continues the sequence cached in ``past``.

        ``past`` is the ``present`` returned by the previous call (keys and values, each
        (B, nh, P, hs), rotary already applied) or None at the start. ``key_padding_mask``, if
        given, covers all P + T keys; ``rotary`` holds the tables of positions P .. P + T - 1.
        Returns ``(y, present)``.
        """
        y, k, v = self._forward(x, key_padding_mask, past, rotary)
        return y, (k, v)

    def _forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        rotary: Rotary | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        past_len = 0 if past is None else past[0].shape[2]
        h = self.ln1(x)
        if torch.jit.is_scripting():
            q, k, v = self.q(h), self.k(h), self.v(h)
        else:
            q, k, v = self._qkv_grouped(h)
        heads = (B, T, self.num_heads, C // self.num_heads)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.rotary_dims > 0:
            if rotary is None:  # called on its own: no model made the tables
                positions = torch.arange(past_len, past_len + T, device=x.device)
                rotary = rotary_tables(positions, self.rotary_dims, self.rotary_base)
            q, k = apply_rotary(q, rotary[0], rotary[1]), apply_rotary(k, rotary[0], rotary[1])
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, P + T, hs)
            v = torch.cat([past[1], v], dim=2)
        attn_mask = self._attention_mask(T, past_len, key_padding_mask, x.device)
        # A causal block without a mask and without past keys can use SDPA's own causal kernel.
        is_causal = self.causal and attn_mask is None and past_len == 0
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + self.drop_path(self.ls1(self.proj(y)))
        x = x + self.drop_path(self.ls2(self.ffn(self.ln2(x))))
        return x, k, v

    @torch.jit.unused
    def _qkv_grouped(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k and v share their input: one fused call where possible (``pattention_group``)."""
        q, k, v = pattention_group((self.q, self.k, self.v), h)
        return q, k, v

    def _attention_mask(
        self,
        num_queries: int,
        past_len: int,
        key_padding_mask: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Boolean SDPA mask (B or 1, 1, T, P + T), True = may attend; None if nothing is masked."""
        num_keys = past_len + num_queries
        needs_causal_mask = self.causal and past_len > 0 and num_queries > 1
        if key_padding_mask is None and not needs_causal_mask:
            return None
        query_pos = torch.arange(past_len, num_keys, device=device)[:, None]  # (T, 1)
        key_pos = torch.arange(num_keys, device=device)[None, :]  # (1, P + T)
        mask = key_pos <= query_pos if self.causal else torch.ones_like(key_pos, dtype=torch.bool)
        mask = mask.expand(num_queries, num_keys)[None, None]  # (1, 1, T, P + T)
        if key_padding_mask is not None:
            if key_padding_mask.shape[-1] != num_keys:
                got = key_padding_mask.shape[-1]
                raise ValueError(f"key_padding_mask covers {got} keys, expected {num_keys}")
            mask = mask & key_padding_mask.to(torch.bool)[:, None, None, :]
            # A padded query whose every key is padded would get NaN from SDPA; letting it see
            # itself keeps it finite and changes no real token (a real query always sees itself).
            mask = mask | (key_pos == query_pos)[None, None]
        return mask
