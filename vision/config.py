"""The vision run's structured config: the schema Hydra checks ``configs/vision.yaml`` against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenformer_mm.train.config import RunConfig


@dataclass
class VisionModelConfig:
    """A timm model by name; ``kwargs`` go to ``timm.create_model`` (e.g. depth, qkv_tokens)."""

    name: str = "tokenformer_tiny_patch16_224"
    img_size: int | None = None  # None: the model's own input size
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageDataConfig:
    """Where the shards are and how the pipeline augments them."""

    name: str = "digits"
    train_shards: str | None = None  # None with name=digits: the embedded set, built on first use
    val_shards: str | None = None
    num_classes: int = 10
    num_workers: int = 2
    eval_batch_size: int = 256
    shuffle_buffer: int = 1000
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class VisionRunConfig(RunConfig):
    domain: str = "vision"
    model: VisionModelConfig = field(default_factory=VisionModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
