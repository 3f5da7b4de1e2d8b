"""The image tower, installed as ``tokenformer_mm.vision``: the timm-registered Tokenformer ViT.

Importing it registers every ``tokenformer_*`` model with timm (``.registry``). The rest of the
tower is imported where it is used, so a model user never loads the data pipeline:
``tokenformer_mm.vision.data`` (the ImageNet webdataset pipeline), ``.sources`` (ImageFolder
trees, the embedded digits), ``.task`` and ``.config`` (the Hydra training run).
"""

if not __name__.startswith("tokenformer_mm."):  # e.g. ``import vision`` from the repository root
    raise ImportError(
        f"this folder installs as tokenformer_mm.vision; import that, not {__name__!r}: a "
        "second copy of the tower would register its own classes with timm"
    )

from . import registry  # noqa: F401  (registers the tokenformer_* family with timm)
from .pretrained import checkpoint_filter_fn, save_for_timm
from .tokenformer_vit import TokenformerViT

__all__ = ["TokenformerViT", "checkpoint_filter_fn", "save_for_timm"]
