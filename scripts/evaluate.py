"""Evaluate a checkpoint of a training run on validation shards.

    python scripts/evaluate.py runs/vision/2026-11-22_10-00-00            # its newest checkpoint
    python scripts/evaluate.py runs/vision/.../checkpoints/step_00001200 \
        --val-shards '/data/imagenet1k-validation-{00..63}.tar' --ema

Vision reports top-1 / top-5 and loss. The run's own config (``.hydra/config.yaml``) rebuilds
the task; a model that grew during the run is rebuilt at its grown size.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tokenformer_mm import checkpoint
from tokenformer_mm.growth import match_token_counts
from tokenformer_mm.tasks import build_task, run_schema


def find_checkpoint(path: Path) -> tuple[Path, Path]:
    """(checkpoint dir, run dir) from either of them."""
    if (path / checkpoint.STATE_FILE).is_file():
        return path, path.parent.parent
    found = checkpoint.latest(path / "checkpoints")
    if found is None:
        raise ValueError(f"{path} is neither a checkpoint directory nor a run with checkpoints")
    return found, path


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("path", type=Path, help="a run directory or one of its checkpoints")
    parser.add_argument("--val-shards", help="shards to evaluate on (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    ckpt, run_dir = find_checkpoint(args.path)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(run_schema(saved.domain)), saved)
    if args.val_shards:
        cfg.data.val_shards = args.val_shards
        cfg.data.train_shards = cfg.data.train_shards or args.val_shards  # unused, but required
    if args.batch_size:
        cfg.data.eval_batch_size = args.batch_size
    task = build_task(cfg)
    model = task.build_model()
    weights = checkpoint.load_weights(
        ckpt / (checkpoint.EMA_FILE if args.ema else checkpoint.MODEL_FILE)
    )
    match_token_counts(model, weights)
    model.load_state_dict(weights)
    metrics = task.evaluate(model.to(args.device), task.eval_loader())
    print(json.dumps({"checkpoint": str(ckpt), **metrics}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
