"""Image data sets turned into webdataset samples: ImageFolder trees and the embedded digits.

The digits are scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download),
upscaled and JPEG-encoded, so the default vision run and the tests have real image shards on a
fresh machine.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokenformer_mm.extras import missing_extra
from tokenformer_mm.shards import cached_shards, write_shards

IMAGE_FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_IMG_SIZE = 64
DIGITS_VAL_EVERY = 5  # every 5th digit is held out for validation (359 of 1,797)


def imagefolder_classes(root: str | os.PathLike) -> list[str]:
    """Class names of an ImageFolder tree (one sub-folder per class), sorted like torchvision."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected root/<class>/<image>.jpg")
    return classes


def imagefolder_samples(root: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """One sample per image file, its bytes stored unchanged under the file's own extension."""
    for label, name in enumerate(imagefolder_classes(root)):
        for path in sorted(Path(root, name).iterdir()):
            suffix = path.suffix.lower()
            if suffix not in IMAGE_FILE_SUFFIXES:
                continue
            yield {
                "__key__": f"{name}/{path.stem}",
                suffix[1:]: path.read_bytes(),
                "cls": str(label).encode(),
                "json": json.dumps({"class_name": name, "filename": path.name}).encode(),
            }


def digits_images(split: str) -> Iterator[tuple[Image.Image, int]]:
    """The scikit-learn digits of a split (``train`` or ``val``) as upscaled RGB images."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:  # the [train] extra
        raise missing_extra(error, "train") from error

    if split not in ("train", "val"):
        raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if (index % DIGITS_VAL_EVERY == 0) != (split == "val"):
            continue
        gray = Image.fromarray(np.uint8(pixels * (255 / 16)))  # 0..16 levels -> 0..255
        image = gray.resize((DIGITS_IMG_SIZE, DIGITS_IMG_SIZE), Image.BICUBIC).convert("RGB")
        yield image, int(label)


def digits_samples(split: str) -> Iterator[dict[str, Any]]:
    for index, (image, label) in enumerate(digits_images(split)):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        yield {
            "__key__": f"digits-{split}-{index:05d}",
            "jpg": buffer.getvalue(),
            "cls": str(label).encode(),
            "json": json.dumps({"class_name": DIGIT_NAMES[label]}).encode(),
        }


def write_digits_shards(out_dir: str | os.PathLike, samples_per_shard: int = 200) -> Path:
    """Write the digits as ``train-*.tar`` (8 shards) and ``val-*.tar`` (2) in ``out_dir``."""
    for split in ("train", "val"):
        write_shards(digits_samples(split), out_dir, split, samples_per_shard, "digits")
    return Path(out_dir)


def ensure_digits_shards(cache_dir: str | os.PathLike | None = None) -> Path:
    """The digits shards in the cache directory, built on first use."""
    return cached_shards("digits", write_digits_shards, cache_dir)
