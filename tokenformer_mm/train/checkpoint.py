"""Checkpoints you can trust: safetensors weights, a weights-only state file, atomic writes.

A checkpoint is a directory ``checkpoints/step_00001200/`` holding

- ``model.safetensors`` (and ``ema.safetensors``): the weights, loadable by timm / open_clip;
- ``state.pt``: optimizer, scheduler, step, RNG states, data position, growth sizes — plain
  tensors and Python containers, so ``torch.load(weights_only=True)`` reads it.

A run with ``train.parallel=fsdp`` writes ``sharded/`` instead of ``model.safetensors`` and the
optimizer: ``torch.distributed.checkpoint`` files, each rank writing its own shards of the model
and the optimizer state (nothing is gathered). It resumes on any number of ranks, and loads
into one process like a full checkpoint (``load_weights``, ``export``).

It is written as ``step_00001200.tmp/`` and renamed when complete, so a process killed mid-save
never leaves a torn checkpoint: the newest complete one is still there and is what ``latest``
returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..distributed import barrier, rank_and_world_size
from ..growth import load_resized
from ..growth.optimizer import NEW_ROWS, restore_new_rows, split_new_rows

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
SHARDED_DIR = "sharded"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (``.tmp`` leftovers are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest(root: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed (a missing, truncated or corrupt file), else None."""
    if is_sharded(checkpoint):
        problem = _sharded_damage(checkpoint / SHARDED_DIR)
        if problem is not None:
            return problem
        files = [checkpoint / STATE_FILE]
    else:
        files = [checkpoint / MODEL_FILE, checkpoint / STATE_FILE]
    if (checkpoint / EMA_FILE).exists():
        files.append(checkpoint / EMA_FILE)
    for file in files:
        try:
            if file.suffix == ".safetensors":
                load_weights(file)
            else:
                torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure to read it: report the file, not the parser
            return f"{file} cannot be read ({type(error).__name__}: {error})"
    return None


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


def is_sharded(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint directory holds ``sharded/`` (written under FSDP2)."""
    return (Path(checkpoint) / SHARDED_DIR / ".metadata").is_file()


def _sharded_damage(folder: Path) -> str | None:
    """A sharded checkpoint is whole when its metadata reads and every file it names is there
    at the size it names (DCP writes each rank's file in one go, then the metadata)."""
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except Exception as error:
        return f"{folder / '.metadata'} cannot be read ({type(error).__name__}: {error})"
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        file = folder / name
        if not file.is_file() or file.stat().st_size < size:
            have = file.stat().st_size if file.is_file() else "no"
            return f"{file} is missing or truncated ({have} bytes, {size} expected)"
    return None


def sharded_shapes(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model tensors of a sharded checkpoint as meta tensors of their full shapes: what
    ``match_depth`` / ``match_token_counts`` need to resize a model before it loads them."""
    metadata = dcp.FileSystemReader(str(Path(checkpoint) / SHARDED_DIR)).read_metadata()
    shapes = {}
    for key, info in metadata.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(info, "size"):
            shapes[key[len("model.") :]] = torch.empty(
                info.size, dtype=info.properties.dtype, device="meta"
            )
    return shapes


@contextlib.contextmanager
def _one_process_quietly() -> Iterator[None]:
    """DCP warns on every save or load without a process group that it "assumes the intent" of
    one process: that is the intent here (resume on 1 rank, export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def _read_sharded_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of a sharded checkpoint, whole, read in this process alone."""
    tensors = {
        key: torch.empty(meta.shape, dtype=meta.dtype)
        for key, meta in sharded_shapes(checkpoint).items()
    }
    with _one_process_quietly():
        dcp.load({"model": tensors}, checkpoint_id=str(checkpoint / SHARDED_DIR), no_dist=True)
    return tensors


def save_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """A module's state dict as safetensors (contiguous, unshared copies of every tensor)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint directory or a ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir() and is_sharded(path):
        return _read_sharded_weights(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; expected a checkpoint dir or .safetensors")
    return safetensors.torch.load_file(str(path))


def load_model(model: nn.Module, source: str | os.PathLike | dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's weights into ``model``, built at its initial size: the one way.

    A run that grew saved more parameter tokens than the model it builds has, so every Pattention
    is first resized to the checkpoint's token counts; then every tensor loads strictly.
    ``source``: a checkpoint directory, a ``.safetensors`` file or a state dict.
    """
    load_resized(model, source if isinstance(source, dict) else load_weights(source))


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
    final = root / f"step_{step:08d}"
    staging = root / f"step_{step:08d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(model, staging / MODEL_FILE)
    if ema is not None:
        save_weights(ema, staging / EMA_FILE)
    torch.save(state, staging / STATE_FILE)
    _publish(root, staging, final, keep)
    return final


def save_sharded(
    root: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any] | None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` with every rank's shards (a collective: every rank calls it;
    ``state`` is rank 0's ``state.pt``, None elsewhere), atomically as ``save`` does."""
    root = Path(root)
    final, staging = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    is_main = rank_and_world_size()[0] == 0
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _one_process_quietly():
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=str(staging / SHARDED_DIR),
            no_dist=not torch.distributed.is_initialized(),
        )
    barrier()  # every rank's files are written before rank 0 publishes the checkpoint
    if is_main:
        torch.save(state, staging / STATE_FILE)
        _publish(root, staging, final, keep)
    barrier()
    return final


def load_sharded(
    checkpoint: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load a sharded checkpoint's model and optimizer state into ``model`` (sharded or not, on
    any number of ranks: DCP re-slices) and ``optimizer``; the model already has its sizes."""
    folder = str(Path(checkpoint) / SHARDED_DIR)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    saved = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    for name, entry in optimizer_state["state"].items():  # growth's seeding, where saved
        if f"optimizer.state.{name}.{NEW_ROWS}" in saved:
            entry[NEW_ROWS] = 0
    both = {"model": model_state, "optimizer": optimizer_state}
    with _one_process_quietly():
        no_dist = not torch.distributed.is_initialized()
        dcp.load(both, checkpoint_id=folder, no_dist=no_dist)
    rows = split_new_rows(both["optimizer"])
    set_state_dict(
        model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"]
    )
    restore_new_rows(model, optimizer, rows)


def export(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A checkpoint's model weights as one ``model.safetensors`` for inference (timm, open_clip,
    ``from_pretrained``); a sharded checkpoint is gathered in this process. Never overwrites."""
    path = Path(path)
    if path.exists():
        raise ValueError(f"{path} already exists; choose another file or remove it")
    tensors = {k: v.contiguous() for k, v in load_weights(checkpoint).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path))
    return path


def _publish(root: Path, staging: Path, final: Path, keep: int) -> None:
    """Make a written checkpoint visible (flushed, renamed), then prune to the newest ``keep``."""
    _fsync_dir(staging, recursive=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old)
    logger.info("saved checkpoint %s", final)


def _fsync_dir(path: Path, recursive: bool = False) -> None:
    """Flush a directory's files and entries, so a rename is only seen after the data is on disk
    (``recursive``: its folders' too, e.g. a staged checkpoint's ``sharded/``)."""
    for file in path.iterdir() if path.is_dir() else []:
        if recursive and file.is_dir():
            _fsync_dir(file, recursive=True)
        elif file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run draws from: Python, NumPy (timm's mixup), torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (Python, NumPy for timm's mixup, torch CPU and CUDA)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy(),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
