"""Image-text pairs: webdataset shards of (``jpg``, ``txt``), for CLIP-style training.

Reuses the image pipeline's decode / crop / device transform; captions are tokenized in the
workers with open_clip's tokenizer. The embedded default turns the digits into pairs with
captions such as "a photo of the digit seven".
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..data import ShardedStream, expand_shards, stream_loader
from ..shards import cached_shards, write_shards
from ..vision.data import EvalDecode, TrainDecode
from ..vision.sources import DIGIT_NAMES, IMAGE_FILE_SUFFIXES, digits_samples

CAPTION_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a blurry picture of a {}.",
)


class PairDecode:
    """Sample -> image crop (as the image pipeline makes it) and caption tokens."""

    def __init__(self, image_decode: TrainDecode | EvalDecode, tokenizer: Callable) -> None:
        self.image_decode = image_decode
        self.tokenizer = tokenizer

    def __call__(self, sample: dict[str, Any], rng: random.Random | None = None) -> dict[str, Any]:
        caption = sample["txt"].decode("utf-8")
        item = self.image_decode({**sample, "cls": sample.get("cls", b"-1")}, rng)
        item["text"] = self.tokenizer([caption])[0]  # (context_length,) token ids
        return item


def pair_loader(
    shards: str | Sequence[str],
    tokenizer: Callable,
    batch_size: int,
    img_size: int,
    train: bool,
    num_workers: int = 2,
    seed: int = 0,
    crop_pct: float = 0.875,
    scale: tuple[float, float] = (0.5, 1.0),
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """Batches ``{"image": uint8, "text": (B, context), "label": (B,) or -1, "key"}``."""
    image_decode = TrainDecode(img_size, scale) if train else EvalDecode(img_size, crop_pct)
    stream = ShardedStream(
        expand_shards(shards),
        PairDecode(image_decode, tokenizer),
        shuffle=train,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return stream_loader(stream, batch_size, num_workers, drop_last=train)


def caption_folder_samples(root: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Images with a caption file beside each (``cat.jpg`` + ``cat.txt``), as scraped sets come."""
    for path in sorted(Path(root).rglob("*")):
        caption = path.with_suffix(".txt")
        if path.suffix.lower() not in IMAGE_FILE_SUFFIXES or not caption.is_file():
            continue
        key = str(path.relative_to(root).with_suffix(""))
        yield {
            "__key__": key,
            path.suffix.lower()[1:]: path.read_bytes(),
            "txt": caption.read_bytes(),
        }


def digits_pair_samples(split: str) -> Iterator[dict[str, Any]]:
    """The digits with a caption each (the templates in turn) and their label."""
    for index, sample in enumerate(digits_samples(split)):
        name = DIGIT_NAMES[int(sample["cls"])]
        caption = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)].format(name)
        yield {**sample, "txt": caption.encode()}


def write_digits_pair_shards(out_dir: Any, samples_per_shard: int = 200) -> Any:
    for split in ("train", "val"):
        write_shards(digits_pair_samples(split), out_dir, split, samples_per_shard, "digits-pairs")
    return out_dir


def ensure_digits_pair_shards(cache_dir: Any = None) -> Any:
    """The digits pairs in the cache directory, built on first use."""
    return cached_shards("digits_pairs", write_digits_pair_shards, cache_dir)
