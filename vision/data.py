"""ImageNet-style webdataset pipeline that keeps a GPU fed (docs/design.md, "Data").

CPU workers do the least work possible: decode the JPEG (at reduced resolution when the crop
allows, via PIL's JPEG draft mode) and crop + resize in one PIL call to a ``uint8`` tensor.
Batches travel pinned and non-blocking; float conversion, normalisation, flips and mixup/cutmix
run on the device in ``DeviceImageTransform``.

Shards use the standard layout (``__key__``, ``jpg|jpeg|png|webp``, ``cls``, optional ``json``),
so the public imagenet-1k-wds shards work unchanged, including their ``_info.json``.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from torch.utils.data import DataLoader

from tokenformer_mm.data import ShardedStream, expand_shards, stream_loader

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


def _open_image(sample: dict[str, Any]) -> Image.Image:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return Image.open(io.BytesIO(sample[ext]))
    raise KeyError(f"sample has no image; expected one of {IMAGE_EXTENSIONS}, got {list(sample)}")


def _crop_resize(image: Image.Image, box: Box, size: int, resample: int) -> torch.Tensor:
    """Crop ``box`` and resize it to ``size`` x ``size``: one PIL call, a uint8 (3, H, W) tensor.

    For JPEGs, ``draft`` first lets the decoder skip detail the output cannot show (DCT scaling
    by 1/2, 1/4 or 1/8), which is most of the decode cost for a small crop of a large photo.
    """
    width, height = image.size
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    if image.format == "JPEG":
        scale = size / min(box_w, box_h)  # output pixels per source pixel
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    sx, sy = image.size[0] / width, image.size[1] / height  # the draft's reduction, if any
    image = image.convert("RGB")
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    image = image.resize((size, size), resample=resample, box=box)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W) uint8


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> Box:
    """The crop of torchvision's ``RandomResizedCrop``, drawn from ``rng`` instead of torch's RNG.

    Ten tries at a random area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    if none fits, the largest central crop whose aspect ratio lies within ``ratio``.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return (left, top, left + w, top + h)
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


class TrainDecode:
    """Sample -> random-resized crop as uint8, with its label (runs in the CPU workers)."""

    def __init__(
        self,
        img_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
    ) -> None:
        self.img_size = img_size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.resample = INTERPOLATIONS[interpolation]

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        label = int(sample["cls"])
        image = _open_image(sample)  # reads the header only: the crop is chosen before decoding
        box = random_resized_crop_box(*image.size, self.scale, self.ratio, rng)
        pixels = _crop_resize(image, box, self.img_size, self.resample)
        return {"image": pixels, "label": label, "key": sample["__key__"]}


class EvalDecode:
    """Sample -> resize the short side to ``img_size / crop_pct``, centre crop ``img_size``."""

    def __init__(self, img_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic"):
        self.img_size = img_size
        self.crop_pct = crop_pct
        self.resample = INTERPOLATIONS[interpolation]

    def __call__(self, sample: dict[str, Any], rng: random.Random | None = None) -> dict[str, Any]:
        label = int(sample["cls"])
        image = _open_image(sample)
        width, height = image.size
        crop = min(width, height) * self.crop_pct  # the centre square, in source pixels
        left, top = (width - crop) / 2, (height - crop) / 2
        pixels = _crop_resize(
            image, (left, top, left + crop, top + crop), self.img_size, self.resample
        )
        return {"image": pixels, "label": label, "key": sample["__key__"]}


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}"
        )


def image_train_loader(
    shards: str | Sequence[str],
    batch_size: int,
    img_size: int,
    num_workers: int = 4,
    seed: int = 0,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
    shuffle_buffer: int = 1000,
    drop_last: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """Training batches ``{"image": uint8 (B, 3, S, S), "label": (B,), "key": [B]}``.

    Shards are shuffled per epoch (``loader.dataset.set_epoch``) with the same seed on every rank,
    then split by rank and worker; samples pass a shuffle buffer, then a random-resized crop.
    Batches also carry ``__worker__`` and ``__raw_position__`` (``stream_position``): the engine's
    cursor takes them out and saves them, so a resume need not decode what it skips.
    """
    _check_interpolation(interpolation)
    stream = ShardedStream(
        expand_shards(shards),
        TrainDecode(img_size, scale, ratio, interpolation),
        shuffle=True,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return stream_loader(stream, batch_size, num_workers, drop_last=drop_last)


def image_eval_loader(
    shards: str | Sequence[str],
    batch_size: int,
    img_size: int,
    crop_pct: float = 0.875,
    num_workers: int = 4,
    interpolation: str = "bicubic",
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """Evaluation batches (as ``image_train_loader``): centre crops, every sample exactly once
    across ranks and workers, the last batch partial."""
    _check_interpolation(interpolation)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    stream = ShardedStream(
        expand_shards(shards),
        EvalDecode(img_size, crop_pct, interpolation),
        rank=rank,
        world_size=world_size,
    )
    return stream_loader(stream, batch_size, num_workers, drop_last=False)


class DeviceImageTransform:
    """The per-batch work moved off the CPU: uint8 -> float, normalise, flip, mixup/cutmix.

    Args:
        mean, std: per-channel statistics on the 0-1 scale (the model's ``pretrained_cfg``).
        hflip: probability of a horizontal flip per image (training only).
        mixup_alpha, cutmix_alpha, label_smoothing, num_classes: timm ``Mixup``; active when
            either alpha is positive, and then the targets are soft (B, num_classes).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        label_smoothing: float = 0.0,
        num_classes: int = 1000,
    ) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255
        self.hflip = hflip
        self.mixup = (
            Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if mixup_alpha > 0 or cutmix_alpha > 0
            else None
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) uint8 on the device -> normalised float images and (soft) targets."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        x = (images.float() - mean) / std
        if train and self.hflip > 0:
            flip = torch.rand(x.shape[0], device=x.device) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if train and self.mixup is not None:
            x, labels = self.mixup(x, labels)
        return x, labels
