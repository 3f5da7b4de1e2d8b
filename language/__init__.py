"""The text tower, installed as ``tokenformer_mm.language``: a causal Tokenformer LM.

The model, the released official checkpoints and the tokenizers are here; the text pipeline
(``tokenformer_mm.language.data``, ``.sources``) and the training run (``.task``, ``.config``)
are imported where they are used.
"""

if not __name__.startswith("tokenformer_mm."):  # e.g. ``import language`` from the repository root
    raise ImportError(
        f"this folder installs as tokenformer_mm.language; import that, not {__name__!r}: a "
        "second copy of the tower would register its own classes with timm"
    )

from .model import CONFIGS, LMConfig, TokenformerLM, lm_config
from .official import load_official
from .tokenizer import ByteTokenizer, HFTokenizer, check_tokenizer_fits, load_tokenizer

__all__ = [
    "CONFIGS",
    "ByteTokenizer",
    "HFTokenizer",
    "LMConfig",
    "TokenformerLM",
    "check_tokenizer_fits",
    "lm_config",
    "load_official",
    "load_tokenizer",
]
