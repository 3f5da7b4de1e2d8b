"""A causal language Tokenformer, in the spirit of nanoGPT's ``model.py``.

Token embedding, causal Tokenformer blocks (rotary on 25 % of each head's dims, NeoX style, base
10000), a learnable final LayerNorm and logits tied to the embedding (docs/design.md, "The
towers"). The blocks are ``tokenformer_mm.TokenformerBlock``: the language tower has no block of
its own. The rotary tables are made once per forward here and passed to every block.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenformer_mm.block import TokenformerBlock
from tokenformer_mm.initialization import discarded_rng, reset_submodules
from tokenformer_mm.rotary import Rotary, rotary_dims, rotary_tables
from tokenformer_mm.theta import accumulation_dtype

from .pretrained import from_pretrained, save_pretrained
from .tokenizer import Tokenizer

IGNORE_INDEX = -100  # targets not scored (PyTorch's and Hugging Face's default)


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
    key_init: str | float = "fan_in"  # or "official" (the paper's N(0, 0.02)), or a std
    # "standard" (the paper's math) or "mup": the values scaled by base / n (block.py)
    parametrization: str = "standard"


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
    """A causal Tokenformer LM with nanoGPT's interface and Hugging Face's loading habits.

    ``model(tokens, targets)`` returns ``(logits, loss)``; ``generate`` decodes batched prompts
    (left-padded, with ``attention_mask``) with a KV cache, cropping to the last
    ``context_length`` tokens once a sequence outgrows it; ``save_pretrained`` /
    ``from_pretrained`` write and read the Hugging Face layout (``language/pretrained.py``).
    """

    config_class = LMConfig

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.grad_checkpointing = False
        with discarded_rng():  # init_weights() below draws every initial value
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
                    key_init=config.key_init,
                    parametrization=config.parametrization,
                )
                for _ in range(config.depth)
            )
            self.norm = nn.LayerNorm(config.dim, eps=1e-5)
            self.rotary_dims = rotary_dims(config.dim // config.num_heads, config.rotary_pct)
        self.init_weights()

    def init_weights(self) -> None:
        """Every initial value (``tokenformer_mm.initialization``: also the step after meta-device
        construction + ``to_empty``)."""
        reset_submodules(self)
        nn.init.normal_(self.embed.weight, std=0.02)

    # --- the forward pass -------------------------------------------------------------------

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        all_logits: bool = False,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss), as nanoGPT's ``forward(idx, targets)``.

        Args:
            tokens: (B, T) token ids, at most ``context_length`` of them.
            targets: (B, T) the next token of each position, ``IGNORE_INDEX`` where not scored.
                Given: logits of every position (B, T, vocab) and the mean cross-entropy.
                None: the logits of the last position only (B, 1, vocab), loss None.
            attention_mask: (B, T) 1 for real tokens, 0 for padding (left padding for batched
                prompts); positions count real tokens only, padded keys are never attended.
            all_logits: the logits of every position even without targets (scoring).
            inputs_embeds: (B, T, dim) input vectors instead of ``tokens`` (e.g. image features
                followed by embedded text, as multimodal code feeds a language model).
        """
        x = self._hidden(tokens, attention_mask, 0, inputs_embeds=inputs_embeds)
        if targets is None and not all_logits:
            x = x[:, -1:]  # (B, 1, C): generation needs the last position only
        logits = F.linear(x, self.embed.weight)  # tied output embedding
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.flatten(0, 1).to(accumulation_dtype(logits.dtype)),  # at least fp32
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
        )
        return logits, loss

    def forward_cached(
        self,
        tokens: torch.Tensor | None,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits (B, T, vocab) of ``tokens`` (or ``inputs_embeds``) continuing the sequence in
        ``cache``, and the new cache (every layer's keys and values, cached and new).

        ``attention_mask``, if given, covers the cached and the new tokens: (B, P + T);
        ``position_ids`` (B, T), if given, replace the positions it implies.
        """
        past_len = 0 if cache is None else cache[0][0].shape[2]
        present: list[tuple[torch.Tensor, torch.Tensor]] = []
        x = self._hidden(
            tokens, attention_mask, past_len, cache, present, inputs_embeds, position_ids
        )
        return F.linear(x, self.embed.weight), present

    def _hidden(
        self,
        tokens: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        past_len: int,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        present: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-normed hidden states (B, T, C); with ``present``, through the KV cache."""
        if (tokens is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of tokens (input_ids) and inputs_embeds")
        x = self.embed(tokens) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T = x.shape[:2]
        self._check_length(past_len + T)
        if attention_mask is not None and attention_mask.shape != (B, past_len + T):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"{(B, past_len + T)} (batch, cached + new tokens)"
            )
        padding = None if attention_mask is None else attention_mask.bool()
        rotary = self._rotary(attention_mask, past_len, T, x.device, position_ids)
        for i, block in enumerate(self.blocks):
            if present is not None:
                past = None if cache is None else cache[i]
                x, kv = block.forward_cached(x, past, key_padding_mask=padding, rotary=rotary)
                present.append(kv)
            elif self.grad_checkpointing and self.training:
                x = checkpoint(block, x, padding, rotary, use_reentrant=False)
            else:
                x = block(x, key_padding_mask=padding, rotary=rotary)
        return self.norm(x)

    def _rotary(
        self,
        attention_mask: torch.Tensor | None,
        past_len: int,
        length: int,
        device: torch.device,
        position_ids: torch.Tensor | None = None,
    ) -> Rotary | None:
        """The rotary tables of the new tokens' positions, made once for every block.

        Without a mask the positions are ``past_len ..``; with one, each sequence counts its
        real tokens, so a left-padded prompt starts at position 0 like an unpadded one (what
        Hugging Face passes as ``position_ids``, which take precedence when given).
        """
        if self.rotary_dims == 0:
            return None
        if position_ids is None and attention_mask is None:
            positions = torch.arange(past_len, past_len + length, device=device)
            return rotary_tables(positions, self.rotary_dims, self.config.rotary_base)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past_len:]
        cos, sin = rotary_tables(position_ids.flatten(), self.rotary_dims, self.config.rotary_base)
        shape = (
            position_ids.shape[0],
            1,
            position_ids.shape[1],
            self.rotary_dims,
        )  # (B|1, 1, T, hs)
        return cos.view(shape), sin.view(shape)

    def _check_length(self, length: int) -> None:
        if length > self.config.context_length:
            raise ValueError(
                f"sequence of {length} tokens is longer than the model's context of "
                f"{self.config.context_length}; shorten it, or build the model with a longer "
                "context_length (generate crops to the context by itself)"
            )

    # --- nanoGPT's and Hugging Face's habits -------------------------------------------------

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of keeping its activations (training only)."""
        self.grad_checkpointing = enable

    def crop_block_size(self, context_length: int) -> None:
        """Shorten the context (nanoGPT's model surgery); rotary needs no table to crop."""
        if not 0 < context_length <= self.config.context_length:
            raise ValueError(
                f"context_length must be in (0, {self.config.context_length}] to crop, got "
                f"{context_length}"
            )
        self.config = replace(self.config, context_length=context_length)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        overwrite: bool = False,
        tokenizer: Tokenizer | None = None,
    ) -> Path:
        """Write the Hugging Face layout (``language/pretrained.py``): ``config.json`` (the
        current token counts), ``model.safetensors``, ``generation_config.json`` and, given the
        model's ``tokenizer``, the files ``AutoTokenizer`` reads."""
        return save_pretrained(self, directory, overwrite, tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> TokenformerLM:
        """A model from ``save_pretrained``'s directory (or one transformers' own
        ``save_pretrained`` wrote), or a Hugging Face Hub repo id."""
        return from_pretrained(cls, name_or_path)

    # --- generation -------------------------------------------------------------------------

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
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue ``tokens`` (B, T) by up to ``max_new_tokens``; (B, T + new) ids.

        ``temperature=0`` is greedy. ``top_k`` keeps the k likeliest tokens, ``top_p`` the
        smallest set whose probability reaches p. Generation stops early once every sequence has
        produced ``stop_token`` (later positions of finished sequences repeat it). Prompts of
        different lengths go in one batch left-padded, ``attention_mask`` (B, T) marking the real
        tokens. Past ``context_length`` the model sees the last ``context_length`` tokens (the
        cache is dropped and the window recomputed each step, as nanoGPT crops).
        ``inputs_embeds`` (B, P, dim) are vectors before ``tokens`` (image features, LLaVA-style;
        ``tokens`` may be (B, 0)): read once into the cache, so the whole sequence must fit the
        context, without padding.
        """
        if max_new_tokens < 0 or temperature < 0:
            raise ValueError(f"need max_new_tokens >= 0 and temperature >= 0, got "
                             f"{max_new_tokens} and {temperature}")  # fmt: skip
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected the tokens' "
                f"{tuple(tokens.shape)}"
            )
        context = self.config.context_length
        prefix = 0 if inputs_embeds is None else inputs_embeds.shape[1]
        if prefix and (attention_mask is not None or not use_cache):
            raise ValueError("inputs_embeds needs use_cache=True and no attention_mask")
        if prefix and prefix + tokens.shape[1] + max_new_tokens > context:
            raise ValueError(
                f"{prefix} embeddings + {tokens.shape[1]} tokens + {max_new_tokens} new ones do "
                f"not fit the context of {context}: embeddings are read once, never cropped"
            )
        was_training = self.training
        self.eval()
        mask = attention_mask
        cache, step_input = None, tokens
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for step in range(max_new_tokens):
            if step == 0 and prefix:
                first = torch.cat([inputs_embeds, self.embed(tokens)], dim=1)  # (B, P + T, C)
                logits, cache = self.forward_cached(None, None, inputs_embeds=first)
            elif use_cache and tokens.shape[1] <= context:
                logits, cache = self.forward_cached(step_input, cache, attention_mask=mask)
            else:  # no cache, or past the context: the last `context` tokens, recomputed
                window_mask = None if mask is None else mask[:, -context:]
                logits, _ = self(tokens[:, -context:], attention_mask=window_mask)
            next_token = sample_next(logits[:, -1].float(), temperature, top_k, top_p, generator)
            if stop_token is not None:
                next_token = torch.where(finished, stop_token, next_token)
                finished |= next_token == stop_token
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            step_input = next_token[:, None]
            if stop_token is not None and finished.all():
                break
        self.train(was_training)
        return tokens


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
