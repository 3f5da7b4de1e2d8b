"""Checkpoints you can trust: safetensors weights, a weights-only state file, atomic writes.

A checkpoint is a directory ``checkpoints/step_00001200/`` holding

- ``model.safetensors`` (and ``ema.safetensors``): the weights, loadable by timm / open_clip,
  with the model's shape record (``growth.shape``) in the file's metadata;
- ``state.pt``: optimizer, scheduler, step, RNG states, data position, growth sizes — plain
  tensors and Python containers, so ``torch.load(weights_only=True)`` reads it.

A run with ``train.parallel=fsdp`` writes ``sharded/`` instead of ``model.safetensors`` and the
optimizer: ``torch.distributed.checkpoint`` files, each rank writing its own shards of the model
and the optimizer state (nothing is gathered). It resumes on any number of ranks, and loads
into one process like a full checkpoint (``load_weights``, ``export``); that format is
``sharded.py``, the RNG capture ``rng.py``, the atomic publication ``atomic.py``.

It is written as ``step_00001200.tmp/`` and renamed when complete, so a process killed mid-save
never leaves a torn checkpoint: the newest complete one is still there and is what ``latest``
returns.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..adapters import TokenAdapter, save_adapter
from ..checkpoint_layout import EMA_FILE, MODEL_FILE, checkpoint_dirs, step_dir_name
from ..growth import Shape, load_resized
from ..weights import file_shape, save_tensors, save_weights
from .atomic import publish
from .sharded import SHARDED_DIR, STATE_FILE, is_sharded, read_sharded_weights, sharded_damage

logger = logging.getLogger(__name__)


def damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed (a missing, truncated or corrupt file), else None."""
    if is_sharded(checkpoint):
        problem = sharded_damage(checkpoint / SHARDED_DIR)
        if problem is not None:
            return problem
        files = [checkpoint / STATE_FILE]
    else:
        files = [checkpoint / MODEL_FILE, checkpoint / STATE_FILE]
    if (checkpoint / EMA_FILE).exists():
        files.append(checkpoint / EMA_FILE)
    for file in files:
        try:
            truncated_by = _missing_bytes(file)
        except Exception as error:  # any failure to read it: report the file, not the parser
            return f"{file} cannot be read ({type(error).__name__}: {error})"
        if truncated_by:
            return f"{file} cannot be read (truncated: {truncated_by} bytes short of its index)"
    return None


def _missing_bytes(file: Path) -> int:
    """How many bytes ``file`` lacks of what its own index names, reading the index alone (a
    resume then reads each file once, to load it: the 1.5B model's are 18 GB a rank).

    A safetensors file: its header's tensor offsets; ``state.pt`` (torch's zip): its central
    directory, at the file's end, and each record's size. A damaged header or directory raises.
    """
    size = file.stat().st_size
    if file.suffix == ".safetensors":
        with file.open("rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        ends = [end for name, t in header.items() if name != "__metadata__"
                for end in t["data_offsets"][1:]]  # fmt: skip
        return max(0, 8 + header_size + max(ends, default=0) - size)
    with zipfile.ZipFile(file) as archive:
        ends = [info.header_offset + info.compress_size for info in archive.infolist()]
    return max(0, max(ends, default=0) - size)


def newest_intact(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``root`` that reads back whole; each damaged one newer than it
    is a warning naming the file. None when there are none; an error when all are damaged."""
    dirs, problems = checkpoint_dirs(root), []
    for path in reversed(dirs):
        problem = damage(path)
        if problem is None:
            if problems:
                logger.warning("%s: resuming from %s instead", "; ".join(problems), path.name)
            return path
        problems.append(problem)
    if problems:
        raise ValueError(
            "no checkpoint of this run can be read: " + "; ".join(problems) + ". Restore one "
            "from a backup, or start a new run in another run_dir"
        )
    return None


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint directory or a ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir() and is_sharded(path):
        return read_sharded_weights(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; expected a checkpoint dir or .safetensors")
    try:
        return safetensors.torch.load_file(str(path))
    except safetensors.SafetensorError as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}): it is corrupt or truncated; "
            "load an earlier checkpoint of the run"
        ) from error


def read_shape(source: str | os.PathLike) -> Shape | None:
    """The shape record of a checkpoint directory (the model's, or a sharded one's state) or a
    ``.safetensors`` file; None for one written before records (read from its tensors then)."""
    path = Path(source)
    if path.is_dir() and is_sharded(path):
        return load_state(path).get("shape")
    return file_shape(path / MODEL_FILE if path.is_dir() else path)


def load_model(model: nn.Module, source: str | os.PathLike) -> nn.Module:
    """``model``, built at its initial size, holding a checkpoint's weights: fitted to the
    checkpoint's shape record (a run that grew), then loaded strictly (``growth.load_resized``).
    ``source``: a checkpoint directory or a ``.safetensors`` file. Returns ``model``."""
    return load_resized(model, load_weights(source), read_shape(source))


def save_adapters(model: nn.Module, directory: Path) -> None:
    """Each token adapter of ``model`` alone (``adapter_<name>.safetensors``) beside its weights."""
    names = {n for m in model.modules() if isinstance(m, TokenAdapter) for n in m.adapter_keys}
    for name in sorted(names):
        save_adapter(model, name, directory / f"adapter_{name}.safetensors")


def save(
    root: str | os.PathLike,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    ema: nn.Module | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep``."""
    root = Path(root)
    final = root / step_dir_name(step)
    staging = root / f"{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_weights(model, staging / MODEL_FILE)
        save_adapters(model, staging)  # each token adapter alone: the file to ship
        if ema is not None:
            save_weights(ema, staging / EMA_FILE)
        torch.save(state, staging / STATE_FILE)
    except BaseException:  # a full disk, Ctrl-C: no half-written checkpoint takes space
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(root, staging, final, keep)
    return final


def export(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A checkpoint's model weights as one ``model.safetensors`` for inference (timm, open_clip,
    ``from_pretrained``); a sharded checkpoint is gathered in this process. Never overwrites."""
    path = Path(path)
    if path.exists():
        raise ValueError(f"{path} already exists; choose another file or remove it")
    tensors = {k: v.contiguous() for k, v in load_weights(checkpoint).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, path, read_shape(checkpoint))
    return path


def load_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
