"""Tokenformer towers inside open_clip: ``import tokenformer_mm.clip`` registers the models.

    import open_clip, tokenformer_mm.clip
    model, _, preprocess = open_clip.create_model_and_transforms("TokenformerCLIP-tiny")
    tokenizer = open_clip.get_tokenizer("TokenformerCLIP-tiny")   # offline: ships with open_clip

The image tower is a timm Tokenformer by name (``timm_model_name``, class-token pooling, a linear
projection), the text tower a ``TokenformerTextEncoder`` built from the shared block. The model
configs are JSON files (``clip_configs/``), as open_clip keeps its own.

open_clip has no hook for a custom text tower, so this module wraps two of its functions, each
for Tokenformer configs only: the text-tower builder (a ``"tokenformer": true`` text config
builds our encoder) and the preprocessing setter (our image mean/std, from the timm config,
replace OpenAI's defaults; an explicit ``image_mean`` / ``image_std`` still wins).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import open_clip
import open_clip.factory
import open_clip.model
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from torch.utils.checkpoint import checkpoint

import vision  # registers the timm image towers

from .block import TokenformerBlock

CONFIG_DIR = Path(__file__).parent / "clip_configs"


class TokenformerTextEncoder(nn.Module):
    """A causal Tokenformer over CLIP tokens, pooled at the end-of-text token, projected.

    Implements open_clip's text-tower interface: ``forward(tokens) -> (B, embed_dim)``,
    ``context_length``, ``vocab_size``, ``lock`` and ``set_grad_checkpointing``.
    """

    def __init__(
        self,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        qkv_tokens: int = 512,
        ffn_tokens: int = 2048,
        rotary_pct: float = 0.25,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.output_tokens = False
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(vocab_size, width)
        block = functools.partial(
            TokenformerBlock, causal=True, rotary_pct=rotary_pct, depth=layers
        )
        self.blocks = nn.ModuleList(
            block(width, heads, qkv_tokens, qkv_tokens, ffn_tokens) for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_projection.weight, std=width**-0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text)  # (B, T, width)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing else block(x)
        x = self.ln_final(x)
        # CLIP's tokenizer gives end-of-text the largest id: pool there (causal: it saw all words)
        pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return self.text_projection(pooled)  # (B, embed_dim)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the tower except its last ``unlocked_layers`` blocks (and then the head)."""
        for param in self.parameters():
            param.requires_grad = False
        if unlocked_layers:
            unlocked = [*self.blocks[-unlocked_layers:], self.ln_final, self.text_projection]
            for module in unlocked:
                for param in module.parameters():
                    param.requires_grad = True
        if not freeze_layer_norm:
            for param in self.ln_final.parameters():
                param.requires_grad = True

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


def _text_tower_builder(build: Any) -> Any:
    @functools.wraps(build)
    def build_text_tower(embed_dim: int, text_cfg: Any, *args: Any, **kwargs: Any) -> nn.Module:
        if isinstance(text_cfg, dict) and text_cfg.get("tokenformer"):
            cfg = {k: v for k, v in text_cfg.items() if k != "tokenformer"}
            return TokenformerTextEncoder(embed_dim, **cfg)
        return build(embed_dim, text_cfg, *args, **kwargs)

    build_text_tower.tokenformer = True
    return build_text_tower


def _preprocess_setter(set_cfg: Any) -> Any:
    @functools.wraps(set_cfg)
    def set_model_preprocess_cfg(model: nn.Module, preprocess_cfg: dict[str, Any]) -> None:
        trunk = getattr(getattr(model, "visual", None), "trunk", None)
        uses_default = tuple(preprocess_cfg["mean"]) == OPENAI_DATASET_MEAN and (
            tuple(preprocess_cfg["std"]) == OPENAI_DATASET_STD
        )
        if isinstance(trunk, vision.TokenformerViT) and uses_default:
            timm_cfg = trunk.pretrained_cfg
            ours = {k: timm_cfg[k] for k in ("mean", "std", "interpolation")}
            preprocess_cfg = {**preprocess_cfg, **ours}
        set_cfg(model, preprocess_cfg)

    set_model_preprocess_cfg.tokenformer = True
    return set_model_preprocess_cfg


def register() -> list[str]:
    """Register the Tokenformer CLIP configs with open_clip (idempotent); returns their names."""
    if not getattr(open_clip.model._build_text_tower, "tokenformer", False):
        open_clip.model._build_text_tower = _text_tower_builder(open_clip.model._build_text_tower)
    if not getattr(open_clip.factory.set_model_preprocess_cfg, "tokenformer", False):
        open_clip.factory.set_model_preprocess_cfg = _preprocess_setter(
            open_clip.factory.set_model_preprocess_cfg
        )
    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


MODEL_NAMES = register()
