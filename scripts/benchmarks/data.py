"""The image pipeline (vs torchvision's ImageFolder) and the text pipeline, samples per second."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.common import (
    record,
    throughput,
)


def photo_folder(root: Path, num_images: int, num_classes: int = 8, seed: int = 0) -> Path:
    """An ImageFolder of real JPEG photos at ImageNet-like sizes (~500x375, quality 90).

    They are random crops, flips and rescales of the two photographs scikit-learn ships, so the
    benchmark decodes real photographic JPEG content without downloading a data set.
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    for i in tqdm(range(num_images), desc="writing JPEGs", unit="img"):
        image = photos[i % len(photos)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        out_w = int(rng.integers(400, 640))
        crop = image.crop((x, y, x + cw, y + ch)).resize((out_w, int(out_w * 0.75)), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / f"class{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench_image_data(args: argparse.Namespace) -> None:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from tokenformer_mm.shards import write_shards
    from tokenformer_mm.vision.data import image_train_loader
    from tokenformer_mm.vision.sources import imagefolder_samples

    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "folder", args.images)
        write_shards(imagefolder_samples(folder), Path(tmp) / "shards", "train", 128)
        shards = str(Path(tmp) / "shards" / "train-*.tar")

        def ours() -> float:
            loader = image_train_loader(shards, args.batch_size, args.img_size, args.workers)
            return throughput(
                (b for _ in range(args.epochs) for b in loader), lambda b: len(b["label"]), 1
            )

        def torchvision_folder() -> float:
            transform = T.Compose(
                [
                    T.RandomResizedCrop(args.img_size, interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                ]
            )
            loader = DataLoader(
                ImageFolder(str(folder), transform),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                drop_last=True,
                persistent_workers=True,
            )
            return throughput(
                (b for _ in range(args.epochs) for b in loader), lambda b: len(b[1]), 1
            )

        rates: dict[str, list[float]] = {"ours": [], "torchvision": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            rates["ours"].append(ours())
            rates["torchvision"].append(torchvision_folder())
    median = {k: float(np.median(v)) for k, v in rates.items()}
    record(
        f"Image loader throughput ({args.img_size}², {args.workers} workers)",
        [
            {
                "pipeline": "tokenformer-mm webdataset (uint8 out; normalise/flip on device)",
                "images/s (median)": f"{median['ours']:.0f}",
                "runs": ", ".join(f"{r:.0f}" for r in rates["ours"]),
            },
            {
                "pipeline": "torchvision ImageFolder + RandomResizedCrop/flip/ToTensor/Normalize",
                "images/s (median)": f"{median['torchvision']:.0f}",
                "runs": ", ".join(f"{r:.0f}" for r in rates["torchvision"]),
            },
        ],
        notes=(
            f"{args.images} real JPEG photos (~500x375, q90), batch {args.batch_size}, "
            f"{args.epochs} epochs per run after one warm-up batch, "
            f"{args.repeats} interleaved runs. "
            f"Speed-up: {median['ours'] / median['torchvision']:.2f}x."
        ),
        report=args.report,
    )


def bench_text_data(args: argparse.Namespace) -> None:
    from tokenformer_mm.language.data import text_train_loader
    from tokenformer_mm.language.sources import write_pydoc_shards
    from tokenformer_mm.language.tokenizer import ByteTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_pydoc_shards(tmp)
        shards = str(Path(tmp) / "train-*.tar")
        rates = []
        for _ in range(args.repeats):
            loader = text_train_loader(
                shards, ByteTokenizer(), args.batch_size, args.seq_len, args.workers
            )
            rates.append(
                throughput(
                    (b for _ in range(args.epochs) for b in loader),
                    lambda b: int(b["length"].sum()),
                    1,
                )
            )
    median = float(np.median(rates))
    record(
        f"Text loader throughput (byte tokenizer, {args.workers} workers)",
        [
            {
                "pipeline": "tokenformer-mm webdataset: decode, tokenize, pack, shuffle",
                "tokens/s (median)": f"{median:,.0f}",
                "sequences/s": f"{median / args.seq_len:,.0f}",
                "runs (tokens/s)": ", ".join(f"{r:,.0f}" for r in rates),
            }
        ],
        notes=(
            f"The embedded CPython-docs corpus, sequences of {args.seq_len} + 1 tokens, batch "
            f"{args.batch_size}, {args.epochs} epochs per run after one warm-up batch."
        ),
        report=args.report,
    )


def bench_resume(args: argparse.Namespace) -> None:
    """Seconds from a mid-epoch resume to its first batch: each worker started at its raw
    sample (the samples before read, not decoded) against replaying the epoch's batches."""
    import time

    from tokenformer_mm.shards import write_shards
    from tokenformer_mm.train.batches import EpochBatches
    from tokenformer_mm.vision.data import image_train_loader
    from tokenformer_mm.vision.sources import imagefolder_samples

    def cursor(shards: str) -> EpochBatches:
        return EpochBatches(
            image_train_loader(shards, args.batch_size, args.img_size, args.workers)
        )

    def first_batch(shards: str, state: dict) -> float:
        resumed = cursor(shards)
        began = time.perf_counter()
        resumed.load_state_dict(state)
        next(resumed)
        return time.perf_counter() - began

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "folder", args.images)
        write_shards(imagefolder_samples(folder), Path(tmp) / "shards", "train", 128)
        shards = str(Path(tmp) / "shards" / "train-*.tar")
        per_epoch = args.images // args.batch_size
        for fraction in (0.1, 0.9):
            at = round(per_epoch * fraction)
            straight = cursor(shards)
            for _ in range(at):
                next(straight)
            saved = straight.state_dict()
            replay = {k: v for k, v in saved.items() if k != "raw_positions"}  # as before
            seconds: dict[str, list[float]] = {"raw": [], "replay": []}
            for _ in range(args.repeats):  # interleaved: machine noise hits both alike
                seconds["raw"].append(first_batch(shards, saved))
                seconds["replay"].append(first_batch(shards, replay))
            raw, old = (float(np.median(seconds[k])) for k in ("raw", "replay"))
            rows.append(
                {"resume at": f"batch {at} of {per_epoch} ({fraction:.0%})",
                 "replaying the batches (before), s": f"{old:.2f}",
                 "from each worker's raw sample (now), s": f"{raw:.2f}",
                 "speed-up": f"{old / raw:.1f}x",
                 "runs, before / now": " / ".join(
                     ", ".join(f"{v:.2f}" for v in seconds[k]) for k in ("replay", "raw"))}
            )  # fmt: skip
    record(
        f"Mid-epoch resume: seconds to the first batch ({args.workers} workers)",
        rows,
        notes=(
            f"{args.images} real JPEG photos (~500x375, q90) in shards of 128, batch "
            f"{args.batch_size}, {args.img_size}² crops; from `load_state_dict` of the saved "
            "position to the first new batch (worker start-up included), median of "
            f"{args.repeats} interleaved runs. Before: every batch up to the position decoded "
            "and augmented again; now: each worker draws its raw samples up to its saved "
            "position without decoding and fewer than one batch per worker is replayed."
        ),
        report=args.report,
    )


def bench_data(args: argparse.Namespace) -> None:
    bench_image_data(args)
    bench_text_data(args)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: data, data-resume."""
    data = commands.add_parser("data", help="image (vs torchvision ImageFolder) and text loaders")
    data.add_argument("--images", type=int, default=1024)
    data.add_argument("--img-size", type=int, default=224)
    data.add_argument("--batch-size", type=int, default=64)
    data.add_argument("--workers", type=int, default=2)
    data.add_argument("--epochs", type=int, default=2)
    data.add_argument("--repeats", type=int, default=3)
    data.add_argument("--seq-len", type=int, default=256, help="text pipeline sequence length")
    data.set_defaults(run=bench_data)
    resume = commands.add_parser(
        "data-resume", help="mid-epoch resume of the image loader: time to the first batch"
    )
    resume.add_argument("--images", type=int, default=4096)
    resume.add_argument("--img-size", type=int, default=224)
    resume.add_argument("--batch-size", type=int, default=64)
    resume.add_argument("--workers", type=int, default=2)
    resume.add_argument("--repeats", type=int, default=3)
    resume.set_defaults(run=bench_resume)
