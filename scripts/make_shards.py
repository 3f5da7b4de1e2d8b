"""Write webdataset shards (+ ``_info.json``) for tokenformer-mm.

python scripts/make_shards.py imagefolder /data/imagenet/train /data/shards --split train
python scripts/make_shards.py digits /data/digits     # the embedded default data set
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from tokenformer_mm.clip.pairs import caption_folder_samples, digits_pair_samples
from tokenformer_mm.language.sources import pydoc_samples, text_file_samples
from tokenformer_mm.shards import existing_shards, write_shards
from tokenformer_mm.vision.sources import digits_samples, imagefolder_samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    folder = commands.add_parser("imagefolder", help="an ImageFolder tree: root/<class>/<image>")
    folder.add_argument("root", help="folder with one sub-folder per class")
    folder.add_argument("out_dir", help="where the shards go")
    folder.add_argument("--split", default="train", help="shard name prefix and _info.json split")
    folder.add_argument("--samples-per-shard", type=int, default=1000)

    digits = commands.add_parser("digits", help="scikit-learn's digits as train/val JPEG shards")
    digits.add_argument("out_dir", help="where the shards go")
    digits.add_argument("--samples-per-shard", type=int, default=200)

    text = commands.add_parser("text", help="text files (.txt: one document; .jsonl: one per line)")
    text.add_argument("inputs", nargs="+", help="files, then the output folder last")
    text.add_argument("--split", default="train", help="shard name prefix and _info.json split")
    text.add_argument("--samples-per-shard", type=int, default=10000)

    pydoc = commands.add_parser("pydoc", help="CPython's help texts as train/val text shards")
    pydoc.add_argument("out_dir", help="where the shards go")
    pydoc.add_argument("--samples-per-shard", type=int, default=500)

    pairs = commands.add_parser("pairs", help="images with captions beside them (x.jpg + x.txt)")
    pairs.add_argument("root", help="folder (searched recursively) of images and .txt captions")
    pairs.add_argument("out_dir", help="where the shards go")
    pairs.add_argument("--split", default="train", help="shard name prefix and _info.json split")
    pairs.add_argument("--samples-per-shard", type=int, default=1000)

    digit_pairs = commands.add_parser("digits-pairs", help="the digits with captions")
    digit_pairs.add_argument("out_dir", help="where the shards go")
    digit_pairs.add_argument("--samples-per-shard", type=int, default=200)

    for command in commands.choices.values():
        command.add_argument(
            "--overwrite", action="store_true", help="replace the split's shards already there"
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.samples_per_shard < 1:
        parser.error(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    root = getattr(args, "root", None)
    if root is not None and not Path(root).is_dir():
        parser.error(f"no folder at {root}")
    if args.command == "imagefolder":
        jobs = [(args.split, imagefolder_samples(args.root), "imagefolder")]
    elif args.command == "digits":
        jobs = [(split, digits_samples(split), "digits") for split in ("train", "val")]
    elif args.command == "text":
        if len(args.inputs) < 2:
            parser.error("text needs at least one input file and the output folder")
        *files, args.out_dir = args.inputs
        missing = [name for name in files if not Path(name).is_file()]
        if missing:
            parser.error(f"no such text file: {', '.join(missing)}")
        jobs = [(args.split, text_file_samples(files), "text")]
    elif args.command == "pydoc":
        jobs = [(split, pydoc_samples(split), "pydoc") for split in ("train", "val")]
    elif args.command == "pairs":
        jobs = [(args.split, caption_folder_samples(args.root), "pairs")]
    else:
        jobs = [(split, digits_pair_samples(split), "digits-pairs") for split in ("train", "val")]
    for split, _, _ in jobs:  # refuse before writing anything
        try:
            existing_shards(args.out_dir, split, args.overwrite)
        except ValueError as error:
            parser.error(str(error))
    for split, samples, name in jobs:
        progress = tqdm(samples, desc=f"{split} samples", unit="doc")
        try:
            paths = write_shards(
                progress, args.out_dir, split, args.samples_per_shard, name, args.overwrite
            )
        except ValueError as error:  # no samples in the input: one line
            parser.error(str(error))
        logging.info("wrote %d %s shards to %s", len(paths), split, args.out_dir)


if __name__ == "__main__":
    main()
