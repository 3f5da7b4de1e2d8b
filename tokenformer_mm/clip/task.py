"""Image-text contrastive training (CLIP) as an engine ``Task``, with zero-shot evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import open_clip
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..distributed import (
    broadcast_from_main,
    gather_rows_to_main,
    rank_and_world_size,
    sum_over_ranks,
)
from ..shards import run_shards
from ..train.config import RunConfig
from ..vision.data import DeviceImageTransform
from ..vision.sources import DIGIT_NAMES
from . import MODEL_NAMES  # importing the package registered the TokenformerCLIP-* configs
from .metrics import clip_metrics
from .pairs import CAPTION_TEMPLATES, ensure_digits_pair_shards, pair_loader


@dataclass
class ClipModelConfig:
    name: str = "TokenformerCLIP-micro"  # an open_clip model name (tokenformer_mm.clip.MODEL_NAMES)


@dataclass
class PairDataConfig:
    name: str = "digits_pairs"
    train_shards: str | None = None  # None with name=digits_pairs: built on first use
    val_shards: str | None = None  # validation samples need a ``cls`` for zero-shot accuracy
    class_names: list[str] = field(default_factory=lambda: list(DIGIT_NAMES))
    templates: list[str] = field(default_factory=lambda: list(CAPTION_TEMPLATES))
    num_workers: int = 2
    eval_batch_size: int = 360
    scale: tuple[float, float] = (0.6, 1.0)


@dataclass
class ClipRunConfig(RunConfig):
    domain: str = "clip"
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)


class ClipTask:
    unit = "pair"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        model_cfg = open_clip.get_model_config(cfg.model.name)
        if model_cfg is None or cfg.model.name not in MODEL_NAMES:
            raise ValueError(
                f"unknown CLIP model {cfg.model.name!r}; expected one of {MODEL_NAMES}"
            )
        vision_cfg = model_cfg["vision_cfg"]
        timm_cfg = timm.models.get_pretrained_cfg(vision_cfg["timm_model_name"]).to_dict()
        self.img_size = vision_cfg["image_size"]
        self.crop_pct = timm_cfg["crop_pct"]
        self.transform = DeviceImageTransform(timm_cfg["mean"], timm_cfg["std"])
        self.tokenizer = open_clip.get_tokenizer(cfg.model.name)
        self.loss = open_clip.ClipLoss()
        self.train_shards, self.val_shards = run_shards(
            cfg.data, {"digits_pairs": ensure_digits_pair_shards}
        )

    def build_model(self) -> nn.Module:
        return open_clip.create_model(self.cfg.model.name)

    def _loader(self, shards: str, batch_size: int, train: bool) -> DataLoader:
        data = self.cfg.data
        return pair_loader(
            shards,
            self.tokenizer,
            batch_size,
            self.img_size,
            train=train,
            num_workers=data.num_workers,
            seed=self.cfg.seed,
            crop_pct=self.crop_pct,
            scale=tuple(data.scale),
        )

    def train_loader(self) -> DataLoader:
        return self._loader(self.train_shards, self.cfg.train.batch_size, train=True)

    def eval_loader(self) -> DataLoader:
        return self._loader(self.val_shards, self.cfg.data.eval_batch_size, train=False)

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        rank, world_size = rank_and_world_size()
        if self.loss.world_size != world_size:  # under torchrun: gather like open_clip
            self.loss = open_clip.ClipLoss(gather_with_grad=True, rank=rank, world_size=world_size)
        images, _ = self.transform(batch["image"], batch["label"], train=True)
        image_features, text_features, logit_scale = model(images, batch["text"])
        return self.loss(image_features, text_features, logit_scale)

    @torch.no_grad()
    def class_embeddings(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        """(classes, D): the mean normalised embedding of each class name's prompts."""
        data = self.cfg.data
        embeddings = []
        for name in data.class_names:
            prompts = self.tokenizer([t.format(name) for t in data.templates]).to(device)
            features = F.normalize(model.encode_text(prompts), dim=-1).mean(0)
            embeddings.append(F.normalize(features, dim=-1))
        return torch.stack(embeddings)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Zero-shot accuracy from class-name prompts, retrieval recall@1 both ways, loss.

        Each rank embeds its share of the pairs; rank 0 gathers the features (not the N x N
        similarities), computes the metrics in chunks (``metrics.clip_metrics``) and sends them
        to every rank.
        """
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        classes = self.class_embeddings(model, device).float().cpu()
        parts: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "tokens": [], "labels": []}
        for batch in loader:
            images, _ = self.transform(batch["image"].to(device), batch["label"])
            text = batch["text"].to(device)
            parts["image"].append(F.normalize(model.encode_image(images), dim=-1).float().cpu())
            parts["text"].append(F.normalize(model.encode_text(text), dim=-1).float().cpu())
            parts["tokens"].append(batch["text"])
            parts["labels"].append(batch["label"])
        model.train(was_training)
        pairs = sum(len(labels) for labels in parts["labels"])
        total = sum_over_ranks({"pairs": torch.tensor(pairs, device=device)})[
            "pairs"
        ]  # NCCL: on GPU
        if total == 0:  # raised on every rank alike
            raise ValueError("the validation loader yielded no pairs; check data.val_shards")
        # A rank whose shards held no pair still joins the gather, with empty rows of each shape.
        empty = {
            "image": torch.empty(0, classes.shape[1]),
            "text": torch.empty(0, classes.shape[1]),
            "tokens": torch.empty(0, self.tokenizer.context_length, dtype=torch.long),
            "labels": torch.empty(0, dtype=torch.long),
        }
        gathered = {
            k: gather_rows_to_main(torch.cat(v) if v else empty[k]) for k, v in parts.items()
        }
        result: dict[str, Any] | None = None
        if gathered["image"] is not None:  # rank 0; an error there must reach every rank
            scale = model.logit_scale.exp().item()
            try:
                result = clip_metrics(**gathered, class_embeddings=classes, logit_scale=scale)
            except Exception as error:  # the other ranks wait in the broadcast below
                result = {"error": f"{type(error).__name__}: {error}"}
        result = broadcast_from_main(result)
        if "error" in result:
            raise RuntimeError(f"CLIP evaluation failed on rank 0: {result['error']}")
        return result

    def batch_items(self, batch: dict[str, Any]) -> int:
        return len(batch["text"])
