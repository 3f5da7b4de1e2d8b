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

from vision.data import DeviceImageTransform
from vision.pairs import CAPTION_TEMPLATES, ensure_digits_pair_shards, pair_loader, tokens_equal
from vision.sources import DIGIT_NAMES

from . import clip  # registers the TokenformerCLIP-* configs with open_clip
from .config import RunConfig
from .data import rank_and_world_size
from .engine import gather_objects
from .shards import run_shards


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
        if model_cfg is None or cfg.model.name not in clip.MODEL_NAMES:
            raise ValueError(
                f"unknown CLIP model {cfg.model.name!r}; expected one of {clip.MODEL_NAMES}"
            )
        vision_cfg = model_cfg["vision_cfg"]
        timm_cfg = timm.models.get_pretrained_cfg(vision_cfg["timm_model_name"]).to_dict()
        self.img_size = vision_cfg["image_size"]
        self.crop_pct = timm_cfg["crop_pct"]
        self.transform = DeviceImageTransform(timm_cfg["mean"], timm_cfg["std"])
        self.tokenizer = open_clip.get_tokenizer(cfg.model.name)
        self.loss = open_clip.ClipLoss()
        self.train_shards, self.val_shards = run_shards(
            cfg.data, "digits_pairs", ensure_digits_pair_shards
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
        if (
            self.loss.world_size != rank_and_world_size()[1]
        ):  # under torchrun: gather like open_clip
            rank, world_size = rank_and_world_size()
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
        """Zero-shot accuracy from class-name prompts, retrieval recall@1 both ways, loss."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        classes = self.class_embeddings(model, device)
        parts: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "tokens": [], "label": []}
        for batch in loader:
            images, _ = self.transform(batch["image"].to(device), batch["label"])
            parts["image"].append(F.normalize(model.encode_image(images), dim=-1).float().cpu())
            parts["text"].append(
                F.normalize(model.encode_text(batch["text"].to(device)), dim=-1).float().cpu()
            )
            parts["tokens"].append(batch["text"])
            parts["label"].append(batch["label"])
        model.train(was_training)
        local = {k: torch.cat(v) for k, v in parts.items()}
        everything = {k: torch.cat([g[k] for g in gather_objects(local)]) for k in local}
        image, text, tokens, label = (everything[k] for k in ("image", "text", "tokens", "label"))
        if len(image) == 0:
            raise ValueError("the validation loader yielded no pairs; check data.val_shards")
        scale = model.logit_scale.exp().item()
        logits = scale * image @ text.T
        target = torch.arange(len(image))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        same_caption = tokens_equal(tokens, tokens)
        labelled = label >= 0
        zero_shot = (image[labelled] @ classes.float().cpu().T).argmax(-1) == label[labelled]
        return {
            "val/loss": loss.item(),
            "val/zeroshot_top1": 100 * zero_shot.float().mean().item() if labelled.any() else 0.0,
            "val/i2t_r1": 100 * same_caption[target, logits.argmax(1)].float().mean().item(),
            "val/t2i_r1": 100 * same_caption[target, logits.argmax(0)].float().mean().item(),
        }

    def batch_items(self, batch: dict[str, Any]) -> int:
        return len(batch["text"])
