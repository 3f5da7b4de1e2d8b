"""Load the released TokenFormer language checkpoints without GPT-NeoX or DeepSpeed.

The official ``pytorch_model.bin`` files are GPT-NeoX "sequential" state dicts (docs/design.md,
"The towers")::

    sequential.0.word_embeddings.weight                                  # (vocab, dim)
    sequential.{i}.attention.{query,key,value,proj}.{key,value}_param_tokens   i = 2 .. L+1
    sequential.{i}.mlp.{key,value}_param_tokens
    sequential.{L+3}.norm.{weight,bias}                                  # the final LayerNorm

Fetch them yourself (this library never downloads), e.g. from the authors' Hugging Face page
``Haiyang-W/TokenFormer-150M`` (files ``pytorch_model.bin``; tokenizer: GPT-NeoX-20B's
``tokenizer.json``), then ``load_official("TokenFormer-150M/pytorch_model.bin")``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from .model import LMConfig, TokenformerLM

# Attention heads of the official sizes, by model width (the checkpoint does not record them).
OFFICIAL_HEADS = {768: 12, 1024: 16, 1280: 16, 1536: 16}
_LAYER_KEY = re.compile(
    r"^sequential\.(\d+)\.(attention\.(query|key|value|proj)|mlp)\.(key|value)_param_tokens$"
)
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # a recomputable buffer some exports include
_PATTENTION = {"query": "q", "key": "k", "value": "v", "proj": "proj"}


def _read(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state = dict(source)
    elif str(source).endswith(".safetensors"):
        import safetensors.torch

        state = safetensors.torch.load_file(str(source))
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
    for wrapper in ("module", "model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    return state


def official_config(
    state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None, context_length: int = 2048
) -> LMConfig:
    """The ``LMConfig`` of an official state dict, inferred from its key names and shapes."""
    if "sequential.0.word_embeddings.weight" not in state_dict:
        raise ValueError(
            "not an official TokenFormer state dict: no 'sequential.0.word_embeddings.weight' "
            f"(first keys: {list(state_dict)[:5]})"
        )
    vocab_size, dim = state_dict["sequential.0.word_embeddings.weight"].shape
    layers = sorted({int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))})
    if not layers:
        raise ValueError("the state dict holds no Tokenformer layers (sequential.N.attention...)")
    first = f"sequential.{layers[0]}"
    heads = num_heads or OFFICIAL_HEADS.get(dim)
    if heads is None:
        raise ValueError(
            f"width {dim} is not an official size {sorted(OFFICIAL_HEADS)}; pass num_heads="
        )
    return LMConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        dim=dim,
        depth=len(layers),
        num_heads=heads,
        qkv_tokens=state_dict[f"{first}.attention.query.key_param_tokens"].shape[0],
        proj_tokens=state_dict[f"{first}.attention.proj.key_param_tokens"].shape[0],
        ffn_tokens=state_dict[f"{first}.mlp.key_param_tokens"].shape[0],
        key_init="official",  # the paper's: what an official checkpoint was trained from
        parametrization="standard",  # its values as they are, whatever its token counts
    )


def official_key_map(depth: int) -> dict[str, str]:
    """Official key -> our key, for a model of ``depth`` layers."""
    mapping = {"sequential.0.word_embeddings.weight": "embed.weight"}
    for layer in range(depth):
        i = layer + 2
        for official, ours in _PATTENTION.items():
            for part in ("key", "value"):
                mapping[f"sequential.{i}.attention.{official}.{part}_param_tokens"] = (
                    f"blocks.{layer}.{ours}.{part}_tokens"
                )
        for part in ("key", "value"):
            mapping[f"sequential.{i}.mlp.{part}_param_tokens"] = f"blocks.{layer}.ffn.{part}_tokens"
    for part in ("weight", "bias"):
        mapping[f"sequential.{depth + 3}.norm.{part}"] = f"norm.{part}"
    return mapping


def load_official(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    num_heads: int | None = None,
    context_length: int = 2048,
) -> TokenformerLM:
    """A ``TokenformerLM`` with the weights of an official checkpoint (path or state dict).

    Sizes come from the tensors, heads from the official table unless given; τ = sqrt(n) of each
    layer, as the official code computes it. Files load with ``weights_only=True``. Missing or
    unexpected keys are reported together in one ``ValueError``.
    """
    state = {k: v for k, v in _read(source).items() if not _IGNORED.search(k)}
    config = official_config(state, num_heads, context_length)
    mapping = official_key_map(config.depth)
    missing = sorted(set(mapping) - set(state))
    unexpected = sorted(set(state) - set(mapping))
    if missing or unexpected:
        raise ValueError(
            "the checkpoint does not match the official TokenFormer layout:"
            + (f"\n  missing: {', '.join(missing)}" if missing else "")
            + (f"\n  unexpected: {', '.join(unexpected)}" if unexpected else "")
        )
    model = TokenformerLM(config)
    ours = {mapping[k]: v for k, v in state.items()}
    own = model.state_dict()
    ours.update({k: v for k, v in own.items() if k.endswith(".tau")})  # sqrt(n), as constructed
    model.load_state_dict(ours)
    return model
