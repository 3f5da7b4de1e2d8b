"""tokenformer-mm: Tokenformer (Pattention) models for vision and language.

The shared core: the Pattention layer, the Tokenformer block and the growth utility.
"""

from .block import TokenformerBlock
from .growth import (
    GrownLayer,
    GrowthReport,
    grow_model,
    grow_optimizer_state,
    load_grown,
    match_token_counts,
)
from .pattention import Pattention, pattention_theta

__all__ = [
    "GrownLayer",
    "GrowthReport",
    "Pattention",
    "TokenformerBlock",
    "grow_model",
    "grow_optimizer_state",
    "load_grown",
    "match_token_counts",
    "pattention_theta",
]
__version__ = "0.1.0"

# Registers the tokenformer_* models with timm, so ``import tokenformer_mm`` is enough for
# ``timm.create_model("tokenformer_base_patch16_224")``. Last, because the towers import the core.
import vision  # noqa: F401
