"""A causal language Tokenformer, in the spirit of nanoGPT's ``model.py``.

Token embedding, causal Tokenformer blocks (rotary on 25 % of each head's dims, NeoX style, base
10000), a learnable final LayerNorm and logits tied to the embedding (docs/design.md, "The
towers"). The blocks are ``tokenformer_mm.TokenformerBlock``: the language tower has no block of
its own. The rotary tables are made once per forward here and passed to every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from tokenformer_mm.block import TokenformerBlock
from tokenformer_mm.rotary import Rotary, rotary_dims, rotary_tables


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 50304  # GPT-NeoX-20B's tokenizer, padded to a multiple of 128
    context_length: int = 2048
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    qkv_tokens: int = 768
    proj_tokens: int = 768
    ffn_tokens: int = 3072
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    norm: str = "l2_norm_gelu"
    dropout: float = 0.0  # on every Pattention's theta and on the attention weights


def _official(dim: int, depth: int, num_heads: int) -> LMConfig:
    """The official sizes use n = dim tokens for q/k/v/proj and 4 x dim for the FFN."""
    return LMConfig(dim=dim, depth=depth, num_heads=num_heads, qkv_tokens=dim, proj_tokens=dim,
                    ffn_tokens=4 * dim)  # fmt: skip


# The official sizes (paper, Pile, 300B tokens) and small ones for CPU runs and tests.
CONFIGS = {
    "150M": _official(768, 12, 12),
    "450M": _official(1024, 24, 16),
    "900M": _official(1280, 32, 16),
    "1.5B": _official(1536, 40, 16),
    "small": LMConfig(vocab_size=320, context_length=256, dim=128, depth=2, num_heads=4,
                      qkv_tokens=128, proj_tokens=128, ffn_tokens=512),
    "tiny": LMConfig(vocab_size=320, context_length=64, dim=32, depth=2, num_heads=2,
                     qkv_tokens=16, proj_tokens=16, ffn_tokens=64),
}  # fmt: skip


def lm_config(name: str, **overrides: object) -> LMConfig:
    """A named config with fields replaced, e.g. ``lm_config("small", vocab_size=50304)``."""
    if name not in CONFIGS:
        raise ValueError(f"unknown LM config {name!r}; expected one of {list(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)


class TokenformerLM(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(
            TokenformerBlock(
                config.dim,
                config.num_heads,
                config.qkv_tokens,
                config.proj_tokens,
                config.ffn_tokens,
                causal=True,
                rotary_pct=config.rotary_pct,
                rotary_base=config.rotary_base,
                norm=config.norm,
                token_dropout=config.dropout,
                attn_dropout=config.dropout,
                depth=config.depth,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim, eps=1e-5)
        self.rotary_dims = rotary_dims(config.dim // config.num_heads, config.rotary_pct)
        nn.init.normal_(self.embed.weight, std=0.02)

    def _rotary(self, start: int, length: int, device: torch.device) -> Rotary | None:
        """The rotary tables of positions ``start .. start + length - 1``, for every block."""
        if self.rotary_dims == 0:
            return None
        positions = torch.arange(start, start + length, device=device)
        return rotary_tables(positions, self.rotary_dims, self.config.rotary_base)

    def _check_length(self, length: int) -> None:
        if length > self.config.context_length:
            raise ValueError(
                f"sequence of {length} tokens is longer than the model's context of "
                f"{self.config.context_length}; shorten it or build the model with a longer "
                "context_length"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits."""
        self._check_length(tokens.shape[1])
        x = self.embed(tokens)  # (B, T, C)
        rotary = self._rotary(0, tokens.shape[1], tokens.device)
        for block in self.blocks:
            x = block(x, rotary=rotary)
        return F.linear(self.norm(x), self.embed.weight)  # tied output embedding

    def forward_cached(
        self, tokens: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]] | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits of ``tokens`` (B, T) continuing the sequence in ``cache``, and the new cache."""
        past_len = 0 if cache is None else cache[0][0].shape[2]
        self._check_length(past_len + tokens.shape[1])
        x = self.embed(tokens)
        rotary = self._rotary(past_len, tokens.shape[1], tokens.device)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block.forward_cached(x, None if cache is None else cache[i], rotary=rotary)
            present.append(kv)
        return F.linear(self.norm(x), self.embed.weight), present

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_token: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``tokens`` (B, T) by up to ``max_new_tokens``; (B, T + new) ids.

        ``temperature=0`` is greedy. ``top_k`` keeps the k likeliest tokens, ``top_p`` the
        smallest set whose probability reaches p. Generation stops early once every sequence has
        produced ``stop_token`` (later positions of finished sequences repeat it).
        """
        if max_new_tokens < 0 or temperature < 0:
            raise ValueError(f"need max_new_tokens >= 0 and temperature >= 0, got "
                             f"{max_new_tokens} and {temperature}")  # fmt: skip
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self._check_length(tokens.shape[1] + max_new_tokens - 1)  # the last one is never fed
        was_training = self.training
        self.eval()
        cache, step_input = None, tokens
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(max_new_tokens):
            if use_cache:
                logits, cache = self.forward_cached(step_input, cache)
            else:
                logits = self(tokens)
            next_token = sample_next(logits[:, -1].float(), temperature, top_k, top_p, generator)
            if stop_token is not None:
                next_token = torch.where(finished, stop_token, next_token)
                finished |= next_token == stop_token
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            step_input = next_token[:, None]
            if stop_token is not None and finished.all():
                break
        self.train(was_training)
        return tokens

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), -math.inf)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
