"""The baselines a Tokenformer is compared with (the matched ViT, GPT) and the small data sets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# timm's ViT of the same width whose FLOPs and parameters match a Tokenformer of n = d tokens
# (q/k/v/proj) and 4d (FFN): per block and token both have 32·d² FLOPs and 16·d² parameters
# when the MLP is 6d wide (8d² + 4·6·d²); depth, width, heads and attention are then identical.
MATCHED_MLP_RATIO = 6.0


VIT_OF_WIDTH = {
    192: "vit_tiny_patch16_224",
    384: "vit_small_patch16_224",
    768: "vit_base_patch16_224",
    1024: "vit_large_patch16_224",
}


class GPTBlock(torch.nn.Module):
    """A nanoGPT block: LayerNorm, causal self-attention (SDPA), LayerNorm, GELU MLP; no biases."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = torch.nn.LayerNorm(dim, bias=False)
        self.c_attn = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.c_proj = torch.nn.Linear(dim, dim, bias=False)
        self.ln_2 = torch.nn.LayerNorm(dim, bias=False)
        hidden = int(mlp_ratio * dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden, bias=False),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v)
        )
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class GPT(torch.nn.Module):
    """nanoGPT's model in brief: learned positions, blocks, final LayerNorm, tied logits.

    With ``mlp_ratio=6`` it has the FLOPs and parameters of a Tokenformer of the same width and
    depth with n = d tokens (q/k/v/proj) and 4d (FFN): see ``MATCHED_MLP_RATIO``.
    """

    def __init__(
        self, vocab: int, context: int, dim: int, depth: int, heads: int, mlp_ratio: float
    ):
        super().__init__()
        self.context = context
        self.wte = torch.nn.Embedding(vocab, dim)
        self.wpe = torch.nn.Embedding(context, dim)
        self.blocks = torch.nn.ModuleList(GPTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.ln_f = torch.nn.LayerNorm(dim, bias=False)
        for name, p in self.named_parameters():  # nanoGPT's init (N(0, 1) logits would saturate)
            if p.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * depth)
                    if name.endswith(("c_proj.weight", "2.weight"))
                    else 0.02
                )
                torch.nn.init.normal_(p, std=std)

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nanoGPT's (logits, loss): every position's logits with targets, else the last's."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x) if targets is not None else self.ln_f(x[:, -1:])
        logits = torch.nn.functional.linear(x, self.wte.weight)
        if targets is None:
            return logits, None
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, top_k: int) -> torch.Tensor:
        """nanoGPT's sampling loop: the whole (cropped) context again for every new token."""
        from tokenformer_mm.language.model import sample_next

        for _ in range(max_new_tokens):
            logits, _ = self(tokens[:, -self.context :])
            tokens = torch.cat([tokens, sample_next(logits[:, -1], 1.0, top_k, None)[:, None]], 1)
        return tokens


class CausalLMAdapter(torch.nn.Module):
    """A transformers causal LM behind the engine's LM interface: ``(logits, loss)`` of inputs
    and their already shifted targets (transformers' own loss would shift them again)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from tokenformer_mm.language.model import IGNORE_INDEX

        logits = self.model(input_ids=tokens, use_cache=False).logits
        if targets is None:
            return logits, None
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
        )
        return logits, loss


def matched_neox(config) -> CausalLMAdapter:
    """transformers' GPT-NeoX (the official Tokenformer's code base) matched to an ``LMConfig``:
    its width, depth, heads, context and vocabulary, rotary on the same fraction of each head
    (NeoX style, same base), sequential residuals and pre-LayerNorms as our blocks, tied
    embeddings, no attention biases, and a ``MATCHED_MLP_RATIO`` x width MLP, so FLOPs and
    parameters match a Tokenformer of n = d (q/k/v/proj) and 4d (FFN) tokens. What still
    differs: its LayerNorms are affine and its MLP has biases (4·d + 7·d per block, 0.5 % of
    the parameters at d = 128), and Pattention's attention-like layers are what it is compared on.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf_config = GPTNeoXConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=int(MATCHED_MLP_RATIO * config.dim), hidden_act="gelu",
        max_position_embeddings=config.context_length, tie_word_embeddings=True,
        use_parallel_residual=False, attention_bias=False, attention_dropout=0.0,
        hidden_dropout=0.0, use_cache=False, rope_parameters={
            "rope_type": "default", "rope_theta": config.rotary_base,
            "partial_rotary_factor": config.rotary_pct,
        },
    )  # fmt: skip
    return CausalLMAdapter(GPTNeoXForCausalLM(hf_config))


MATCHED_VIT_MICRO = (
    "vit_tiny_patch16_224 img_size=32 patch_size=4 embed_dim=96 depth=4 num_heads=3 "
    f"mlp_ratio={MATCHED_MLP_RATIO:g}"
)


# The same ViT with the Tokenformer family's LayerScale (timm's ``init_values``, 0.1 as
# TokenformerViT's default): the comparison that isolates Pattention; the plain one above is what
# a timm user would pick.
MATCHED_VIT_MICRO_LAYERSCALE = f"{MATCHED_VIT_MICRO} init_values=0.1"
VIT_LABELS = {
    MATCHED_VIT_MICRO: "matched ViT, plain (no LayerScale)",
    MATCHED_VIT_MICRO_LAYERSCALE: "matched ViT + LayerScale 0.1",
}


MATCHED_VIT_CLIP = "matched-vit"
MATCHED_VIT_CLIP_LAYERSCALE = "matched-vit-layerscale"


# open_clip's own ViT towers in TokenformerCLIP-micro's shape (mlp_ratio matches the parameters),
# plain and with the LayerScale both Tokenformer towers carry (open_clip's ``ls_init_value``).
MATCHED_VIT_CLIP_CFG = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 32, "patch_size": 4, "width": 96, "layers": 4, "head_width": 32,
        "mlp_ratio": MATCHED_MLP_RATIO,
    },
    "text_cfg": {
        "context_length": 20, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 2,
        "mlp_ratio": MATCHED_MLP_RATIO,
    },
}  # fmt: skip
MATCHED_VIT_CLIP_CFGS = {
    MATCHED_VIT_CLIP: MATCHED_VIT_CLIP_CFG,
    MATCHED_VIT_CLIP_LAYERSCALE: {
        "embed_dim": 128,
        **{tower: {**MATCHED_VIT_CLIP_CFG[tower], "ls_init_value": 0.1}
           for tower in ("vision_cfg", "text_cfg")},
    },
}  # fmt: skip


def digits_image_folder(root: Path, img_size: int = 32) -> Path:
    """scikit-learn's digits as an ImageFolder of PNGs (``train/``, ``validation/``), the layout
    timm's train.py reads; the split is the embedded digits' one."""
    from sklearn.datasets import load_digits

    from tokenformer_mm.vision.sources import DIGITS_VAL_EVERY

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / ("validation" if i % DIGITS_VAL_EVERY == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image * (255 / 16)).astype(np.uint8))
        pixels.resize((img_size, img_size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


def byte_stream(split: str) -> torch.Tensor:
    """The CPython help texts of a split as one stream of UTF-8 bytes, 256 between documents."""
    from tokenformer_mm.language.sources import pydoc_documents

    ids: list[int] = []
    for _, text in pydoc_documents(split):
        ids += [*text.encode("utf-8"), 256]
    return torch.tensor(ids)
