"""The image tower: the timm-registered Tokenformer ViT family and the ImageNet pipeline.

Importing this package registers every ``tokenformer_*`` model with timm (timm has no plugin
discovery, so registration happens on import).
"""

from .tokenformer_vit import TokenformerViT, checkpoint_filter_fn

__all__ = ["TokenformerViT", "checkpoint_filter_fn"]
