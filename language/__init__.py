"""The text tower: a causal Tokenformer LM, tokenizers, the text pipeline, official checkpoints."""

from .config import LanguageRunConfig
from .model import CONFIGS, LMConfig, TokenformerLM, lm_config
from .official import load_official
from .task import LanguageModelingTask
from .tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "CONFIGS",
    "ByteTokenizer",
    "HFTokenizer",
    "LMConfig",
    "LanguageModelingTask",
    "LanguageRunConfig",
    "TokenformerLM",
    "lm_config",
    "load_official",
    "load_tokenizer",
]
