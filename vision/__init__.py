"""The image tower: the timm-registered Tokenformer ViT family, the ImageNet pipeline, the task.

Importing this package registers every ``tokenformer_*`` model with timm (timm has no plugin
discovery, so registration happens on import).
"""

from .config import VisionRunConfig
from .task import ImageClassificationTask, create_model
from .tokenformer_vit import TokenformerViT, checkpoint_filter_fn

__all__ = [
    "ImageClassificationTask",
    "TokenformerViT",
    "VisionRunConfig",
    "checkpoint_filter_fn",
    "create_model",
]
