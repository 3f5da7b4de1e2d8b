"""The language run's structured config: the schema of ``configs/language.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenformer_mm.train.config import RunConfig


@dataclass
class LanguageModelConfig:
    """A named ``LMConfig`` (``language.model.CONFIGS``) with fields replaced by ``overrides``.

    ``vocab_size`` always comes from the tokenizer.
    """

    name: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextDataConfig:
    name: str = "pydoc"
    train_shards: str | None = None  # None with name=pydoc / stdlib: embedded, built on first use
    val_shards: str | None = None
    tokenizer: str = "byte"  # or the path of a tokenizer.json
    seq_len: int = 256
    text_field: str = "text"
    num_workers: int = 1
    eval_batch_size: int = 32
    shuffle_buffer: int = 1000


@dataclass
class LanguageRunConfig(RunConfig):
    domain: str = "language"
    model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
