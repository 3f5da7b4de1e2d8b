"""Image classification as an engine ``Task``: the timm model, the shard loaders, loss and top-k."""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader

from tokenformer_mm.distributed import sum_over_ranks
from tokenformer_mm.shards import run_shards

from .data import DeviceImageTransform, image_eval_loader, image_train_loader
from .sources import ensure_digits_shards


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        ours = ", ".join(timm.list_models("tokenformer_*"))
        raise ValueError(f"unknown model {name!r}; Tokenformer models: {ours} (or any timm model)")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a clear error for an unknown name.

    Importing this package registered the tokenformer_* models, so they are always found here.
    """
    check_model_name(name)
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise ValueError(
            f"model {name!r} was given a keyword it does not take ({error}); check model.kwargs "
            f"(given: {sorted(kwargs)})"
        ) from error


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """A label outside [0, num_classes) is a data or config error, not an index error."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"label {bad} in a batch, but data.num_classes={num_classes}: set data.num_classes to "
            "the data set's class count, or check the shards' .cls entries"
        )


class ImageClassificationTask:
    """Supervised classification on webdataset shards (digits by default, ImageNet for real)."""

    unit = "img"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        check_model_name(cfg.model.name)  # before any work
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg.model.name).to_dict()
        self.img_size = cfg.model.img_size or pretrained_cfg["input_size"][-1]
        self.crop_pct = pretrained_cfg["crop_pct"]
        self.interpolation = pretrained_cfg["interpolation"]
        self.transform = DeviceImageTransform(
            pretrained_cfg["mean"],
            pretrained_cfg["std"],
            hflip=cfg.data.hflip,
            mixup_alpha=cfg.data.mixup_alpha,
            cutmix_alpha=cfg.data.cutmix_alpha,
            label_smoothing=cfg.data.label_smoothing,
            num_classes=cfg.data.num_classes,
        )
        self.train_shards, self.val_shards = run_shards(cfg.data, {"digits": ensure_digits_shards})

    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model.kwargs)
        if self.cfg.model.img_size:
            kwargs["img_size"] = self.cfg.model.img_size
        return create_model(self.cfg.model.name, num_classes=self.cfg.data.num_classes, **kwargs)

    def train_loader(self) -> DataLoader:
        data = self.cfg.data
        return image_train_loader(
            self.train_shards,
            self.cfg.train.batch_size,
            self.img_size,
            num_workers=data.num_workers,
            seed=self.cfg.seed,
            scale=tuple(data.scale),
            ratio=tuple(data.ratio),
            interpolation=self.interpolation,
            shuffle_buffer=data.shuffle_buffer,
        )

    def eval_loader(self) -> DataLoader:
        return image_eval_loader(
            self.val_shards,
            self.cfg.data.eval_batch_size,
            self.img_size,
            crop_pct=self.crop_pct,
            num_workers=self.cfg.data.num_workers,
            interpolation=self.interpolation,
        )

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        check_labels(batch["label"], self.cfg.data.num_classes)
        images, targets = self.transform(batch["image"], batch["label"], train=True)
        logits = model(images)
        if targets.ndim == 2:  # mixup / cutmix soft targets (label smoothing included)
            return SoftTargetCrossEntropy()(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.cfg.data.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        totals = {
            k: torch.zeros((), dtype=torch.float64, device=device)
            for k in ("loss", "top1", "top5", "count")
        }
        for batch in loader:
            labels = batch["label"].to(device, non_blocking=True)
            check_labels(labels, self.cfg.data.num_classes)
            images, _ = self.transform(batch["image"].to(device, non_blocking=True), labels)
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            totals["loss"] += F.cross_entropy(logits, labels, reduction="sum")
            totals["top1"] += (top5[:, 0] == labels).sum()
            totals["top5"] += (top5 == labels[:, None]).any(-1).sum()
            totals["count"] += len(labels)
        model.train(was_training)
        loss, top1, top5, count = sum_over_ranks(totals).values()
        if count == 0:
            raise ValueError("the validation loader yielded no samples; check data.val_shards")
        return {
            "val/loss": loss / count,
            "val/top1": 100 * top1 / count,
            "val/top5": 100 * top5 / count,
        }

    def batch_items(self, batch: dict[str, Any]) -> int:
        return len(batch["label"])
