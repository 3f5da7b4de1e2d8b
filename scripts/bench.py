"""Benchmarks of tokenformer-mm; each prints a table and appends it to docs/benchmarks.md.

    python scripts/bench.py pattention    # fused vs plain vs official vs the matmul-only bound
    python scripts/bench.py vision        # tokenformer_* vs timm vit_* of equal FLOPs / params
    python scripts/bench.py language      # vs GPT-NeoX (matched) and nanoGPT; generation, cache
    python scripts/bench.py data          # image and text pipelines, samples/s
    python scripts/bench.py data-resume   # mid-epoch resume of the image loader, seconds
    python scripts/bench.py clip-eval     # CLIP retrieval metrics of 50,000 pairs: peak memory
    python scripts/bench.py timm-train --train-py ../pytorch-image-models/train.py
                                          # variants vs the matched ViT under timm's train.py
    python scripts/bench.py clip-train    # CLIP towers under open_clip's own trainer
    python scripts/bench.py shard-memory  # bytes per rank, DDP vs FSDP2, 450M LM on 2 ranks
    python scripts/bench.py hf-checkpointing  # activation memory under transformers

Every entry records the command line, machine, torch version and date, so a figure can always be
reproduced. On a CUDA machine the same commands measure GPU figures. Each subject is one file in
``scripts/benchmarks/`` with its subcommands; this file only dispatches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import (
    clip_eval,
    data,
    growth_kick,
    hf_checkpointing,
    language,
    pattention,
    shard_memory,
    upstream,
    vision,
)
from benchmarks.common import REPORT

SUBJECTS = (
    pattention, data, vision, language, upstream, growth_kick, shard_memory, clip_eval,
    hf_checkpointing,
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for subject in SUBJECTS:
        subject.add_commands(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--report", type=Path, default=REPORT, help="markdown file to append to"
        )
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
