"""Tokenformer towers inside open_clip: ``import tokenformer_mm.clip`` registers the models.

    import open_clip, tokenformer_mm.clip
    model, _, preprocess = open_clip.create_model_and_transforms("TokenformerCLIP-tiny")
    tokenizer = open_clip.get_tokenizer("TokenformerCLIP-tiny")   # offline: ships with open_clip

The image tower is a timm Tokenformer by name (``timm_model_name``, class-token pooling, a linear
projection), the text tower a ``TokenformerTextEncoder`` built from the shared block. The model
configs are JSON files (``configs/``), as open_clip keeps its own. This package is the one place
that joins the two towers: the image-text pipeline (``.pairs``) and the CLIP training run
(``.task``, with its retrieval metrics in ``.metrics``) are imported where they are used.
"""

from .factory import CONFIG_DIR, register
from .text_tower import TokenformerTextEncoder

MODEL_NAMES = register()

__all__ = ["CONFIG_DIR", "MODEL_NAMES", "TokenformerTextEncoder", "register"]
