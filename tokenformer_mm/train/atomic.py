"""Atomic publication of a checkpoint directory: flushed, renamed, then the oldest pruned."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..checkpoint_layout import checkpoint_dirs

logger = logging.getLogger(__name__)


def publish(root: Path, staging: Path, final: Path, keep: int) -> None:
    """Make a written checkpoint visible (flushed, renamed), then prune to the newest ``keep``."""
    fsync_dir(staging, recursive=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    fsync_dir(root)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old)
    logger.info("saved checkpoint %s", final)


def fsync_dir(path: Path, recursive: bool = False) -> None:
    """Flush a directory's files and entries, so a rename is only seen after the data is on disk
    (``recursive``: its folders' too, e.g. a staged checkpoint's ``sharded/``)."""
    for file in path.iterdir() if path.is_dir() else []:
        if recursive and file.is_dir():
            fsync_dir(file, recursive=True)
        elif file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
