"""The ``tokenformer_*`` family as timm registers it: each variant's pretrained config, its size
and its ``@register_model`` entrypoint (timm's ``default_cfgs`` and entrypoints), kept apart from
the model class in ``tokenformer_vit.py``.

No released weights exist: load your own with ``pretrained_cfg_overlay=dict(file=...)``.
"""

from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .pretrained import checkpoint_filter_fn, with_weights_file
from .tokenformer_vit import TokenformerViT


def _create_tokenformer(variant: str, pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    out_indices = kwargs.pop("out_indices", 3)
    adapter = kwargs.pop("adapter", None)  # a token adapter file (save_adapter): loaded, active
    model = build_model_with_cfg(
        TokenformerViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **with_weights_file(pretrained, kwargs),  # a run or checkpoint dir: its weights file
    )
    if adapter is not None:
        from tokenformer_mm.adapters import load_adapter

        load_adapter(model, adapter, Path(adapter).stem.replace(".", "_"))  # named by its file
    return model


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2410.23168",
        "paper_name": "TokenFormer: Rethinking Transformer Scaling with Tokenized Model Parameters",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "tokenformer_micro_patch4_32": _cfg(input_size=(3, 32, 32)),
        "tokenformer_tiny_patch16_224": _cfg(),
        "tokenformer_small_patch16_224": _cfg(),
        "tokenformer_base_patch16_224": _cfg(),
        "tokenformer_base_patch16_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
        "tokenformer_base_patch32_224": _cfg(),
        "tokenformer_base_vitparams_patch16_224": _cfg(),
        "tokenformer_large_patch16_224": _cfg(),
        "tokenformer_large_patch16_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
    }
)

_MICRO = dict(embed_dim=96, depth=4, num_heads=3, qkv_tokens=96, ffn_tokens=384)
_TINY = dict(embed_dim=192, depth=12, num_heads=3, qkv_tokens=192, ffn_tokens=768)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6, qkv_tokens=384, ffn_tokens=1536)
_BASE = dict(embed_dim=768, depth=12, num_heads=12, qkv_tokens=768, ffn_tokens=3072)
_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, qkv_tokens=1024, ffn_tokens=4096)


@register_model
def tokenformer_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-Micro/4 for 32x32 images (CPU experiments, the digits): dim 96, 4 blocks."""
    model_args = dict(img_size=32, patch_size=4, **_MICRO)
    return _create_tokenformer(
        "tokenformer_micro_patch4_32", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-Ti/16: dim 192, 12 blocks, 192 qkv/proj tokens, 768 FFN tokens."""
    model_args = dict(patch_size=16, **_TINY)
    return _create_tokenformer(
        "tokenformer_tiny_patch16_224", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-S/16: dim 384, 12 blocks, 384 qkv/proj tokens, 1536 FFN tokens."""
    model_args = dict(patch_size=16, **_SMALL)
    return _create_tokenformer(
        "tokenformer_small_patch16_224", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-B/16, paper Table 9's size: dim 768, 768 / 3072 tokens (its 82.5 top-1 is
    the paper's block: no LayerScale, N(0, 0.02) keys; these defaults differ)."""
    model_args = dict(patch_size=16, **_BASE)
    return _create_tokenformer(
        "tokenformer_base_patch16_224", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-B/16 at 384x384."""
    model_args = dict(img_size=384, patch_size=16, **_BASE)
    return _create_tokenformer(
        "tokenformer_base_patch16_384", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_base_patch32_224(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-B/32: the base model with 32x32 patches."""
    model_args = dict(patch_size=32, **_BASE)
    return _create_tokenformer(
        "tokenformer_base_patch32_224", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_base_vitparams_patch16_224(
    pretrained: bool = False, **kwargs: Any
) -> TokenformerViT:
    """Tokenformer-B/16 with ViT-B's parameter count (paper Table 9): 576 / 2304 tokens."""
    model_args = dict(patch_size=16, **dict(_BASE, qkv_tokens=576, ffn_tokens=2304))
    return _create_tokenformer(
        "tokenformer_base_vitparams_patch16_224", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-L/16, paper Table 9's size: dim 1024, 24 blocks, 1024 / 4096 tokens."""
    model_args = dict(patch_size=16, **_LARGE)
    return _create_tokenformer(
        "tokenformer_large_patch16_224", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def tokenformer_large_patch16_384(pretrained: bool = False, **kwargs: Any) -> TokenformerViT:
    """Tokenformer-L/16 at 384x384."""
    model_args = dict(img_size=384, patch_size=16, **_LARGE)
    return _create_tokenformer(
        "tokenformer_large_patch16_384", pretrained, **dict(model_args, **kwargs)
    )
