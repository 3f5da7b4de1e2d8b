"""tokenformer-mm: Tokenformer (Pattention) models for vision and language.

The shared core: the Pattention layer, the Tokenformer block and the growth utility. The towers
are sub-packages (``tokenformer_mm.vision``, ``tokenformer_mm.language``), the open_clip
integration is ``tokenformer_mm.clip`` and the training engine ``tokenformer_mm.train``; none of
them is imported here except the image tower's model definitions, which register the
``tokenformer_*`` family with timm (timm has no plugin discovery), so that
``import tokenformer_mm; timm.create_model("tokenformer_tiny_patch16_224")`` works.
"""

from .block import TokenformerBlock
from .growth import (
    GrownLayer,
    GrowthReport,
    grow_depth,
    grow_model,
    grow_optimizer_state,
    load_grown,
    load_resized,
    model_shape,
)
from .pattention import Pattention, pattention_group, set_fused_pattention
from .theta import pattention_theta

try:
    from .vision import registry  # noqa: F401  (registers the timm models; no pipeline)
except ModuleNotFoundError as error:  # a checkout on sys.path that was never installed
    if error.name != "tokenformer_mm.vision":
        raise
    raise ModuleNotFoundError(
        "tokenformer_mm.vision is not installed: the towers live in vision/ and language/ beside "
        "tokenformer_mm/ and are mapped into the package by the install; run "
        "pip install -e . in the checkout (README, Install)",
        name=error.name,
    ) from error

__all__ = [
    "GrownLayer",
    "GrowthReport",
    "Pattention",
    "TokenformerBlock",
    "grow_depth",
    "grow_model",
    "grow_optimizer_state",
    "load_grown",
    "load_resized",
    "model_shape",
    "pattention_group",
    "pattention_theta",
    "set_fused_pattention",
]
__version__ = "0.1.0"
