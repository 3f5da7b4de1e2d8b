"""Evaluate a checkpoint of a training run on validation shards.

    python scripts/evaluate.py runs/vision/2026-11-22_10-00-00            # its newest checkpoint
    python scripts/evaluate.py runs/vision/.../checkpoints/step_00000800 \\
        --val-shards '/data/imagenet1k-validation-{00..63}.tar' --ema

Vision reports top-1 / top-5 and loss, language loss and perplexity. The run's own config
rebuilds the task; a model that grew during the run is rebuilt at its grown size.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from tokenformer_mm.train import load_run


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a run directory or one of its checkpoints")
    parser.add_argument("--val-shards", help="shards to evaluate on (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.batch_size is not None and args.batch_size <= 0:
        parser.error(f"--batch-size must be a positive int, got {args.batch_size}")
    overrides = {}
    if args.val_shards:  # the train shards are not read, but a task needs a pattern for them
        overrides = {"data.val_shards": args.val_shards, "data.train_shards": args.val_shards}
    if args.batch_size is not None:
        overrides["data.eval_batch_size"] = args.batch_size
    try:
        _, task, model, ckpt = load_run(args.path, overrides, ema=args.ema)
        metrics = task.evaluate(model.to(args.device), task.eval_loader())
    except (ValueError, FileNotFoundError) as error:  # a wrong path, flag or split: one line
        parser.error(str(error))
    print(json.dumps({"checkpoint": str(ckpt), **metrics}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
