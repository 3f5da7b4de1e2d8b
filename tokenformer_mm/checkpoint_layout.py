"""Where a run keeps its checkpoints: the one owner of these names and of "the newest one".

    <run_dir>/checkpoints/step_00001200/       model.safetensors, ema.safetensors, state.pt
                                               (train.parallel=fsdp: sharded/ for the model)
    <run_dir>/checkpoints/step_00001200.tmp/   a checkpoint being written: never read

The engine writes this layout (``train/checkpoint.py``, ``train/sharded.py``); timm's loader
(``vision/pretrained.py``), ``load_run``, the scripts and the studies find checkpoints through
``checkpoint_dirs`` and ``newest_checkpoint``. Torch and the standard library alone: the core
(timm's loader) uses it without the engine's extras.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"  # also an export's and timm's or Hugging Face's folder's name
EMA_FILE = "ema.safetensors"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    """The folder of the checkpoint of ``step`` (zero-padded: sorted by name is sorted by step)."""
    return f"step_{step:08d}"


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (``.tmp`` leftovers are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def checkpoints_root(path: str | os.PathLike) -> Path:
    """The folder holding the step folders: a run directory's ``checkpoints/``, else ``path``."""
    path = Path(path)
    return path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path


def newest_checkpoint(path: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run directory or of its ``checkpoints/`` folder."""
    dirs = checkpoint_dirs(checkpoints_root(path))
    return dirs[-1] if dirs else None
