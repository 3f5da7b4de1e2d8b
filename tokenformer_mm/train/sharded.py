"""The sharded checkpoint format of FSDP2 runs: ``sharded/``, ``torch.distributed.checkpoint``
files that each rank writes for its own shards (nothing is gathered). It resumes on any number
of ranks (DCP re-slices) and reads whole in one process (``read_sharded_weights``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..checkpoint_layout import step_dir_name
from ..distributed import barrier, rank_and_world_size
from ..growth.optimizer import NEW_ROWS, restore_new_rows, split_new_rows
from .atomic import publish

SHARDED_DIR = "sharded"
STATE_FILE = "state.pt"


def is_sharded(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint directory holds ``sharded/`` (written under FSDP2)."""
    return (Path(checkpoint) / SHARDED_DIR / ".metadata").is_file()


def sharded_damage(folder: Path) -> str | None:
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


def read_sharded_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of a sharded checkpoint, whole, read in this process alone."""
    tensors = {
        key: torch.empty(meta.shape, dtype=meta.dtype)
        for key, meta in sharded_shapes(checkpoint).items()
    }
    with _one_process_quietly():
        dcp.load({"model": tensors}, checkpoint_id=str(checkpoint / SHARDED_DIR), no_dist=True)
    return tensors


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
    final = root / step_dir_name(step)
    staging = root / f"{final.name}.tmp"
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
        publish(root, staging, final, keep)
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
