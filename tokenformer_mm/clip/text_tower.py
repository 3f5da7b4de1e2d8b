"""The CLIP text tower: a causal Tokenformer over CLIP tokens, built from the shared block."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..block import TokenformerBlock
from ..initialization import discarded_rng, reset_submodules
from ..rotary import rotary_dims, rotary_tables


class TokenformerTextEncoder(nn.Module):
    """A causal Tokenformer over CLIP tokens, pooled at the end-of-text token, projected.

    Implements open_clip's text-tower interface: ``forward(tokens) -> (B, embed_dim)``,
    ``context_length``, ``vocab_size``, ``lock`` and ``set_grad_checkpointing``. Its blocks
    carry LayerScale (``init_values``, 0 or None for none) by default, as the image tower's do.
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
        init_values: float | None = 0.1,
        parametrization: str = "standard",
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.output_tokens = False
        self.grad_checkpointing = False
        with discarded_rng():  # init_weights() below draws every initial value
            self.token_embedding = nn.Embedding(vocab_size, width)
            block = functools.partial(
                TokenformerBlock,
                causal=True,
                rotary_pct=rotary_pct,
                depth=layers,
                init_values=init_values,
                parametrization=parametrization,
            )
            self.blocks = nn.ModuleList(
                block(width, heads, qkv_tokens, qkv_tokens, ffn_tokens) for _ in range(layers)
            )
            self.rotary_dims = rotary_dims(width // heads, rotary_pct)
            self.ln_final = nn.LayerNorm(width)
            self.text_projection = nn.Linear(width, embed_dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Every initial value (``tokenformer_mm.initialization``: also the step after meta-device
        construction + ``to_empty``)."""
        reset_submodules(self)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_projection.weight, std=self.ln_final.normalized_shape[0] ** -0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text)  # (B, T, width)
        rotary = None
        if self.rotary_dims > 0:  # once per forward, for every block
            positions = torch.arange(text.shape[1], device=text.device)
            rotary = rotary_tables(positions, self.rotary_dims)
        for block in self.blocks:
            if self.grad_checkpointing:
                x = checkpoint(block, x, None, rotary, use_reentrant=False)
            else:
                x = block(x, rotary=rotary)
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
