"""The run directory before the run starts. Hydra makes ``hydra.run.dir`` (our ``run_dir``)
before ``scripts/train.py``'s main runs; ``RunDirCallback`` (each config's ``hydra.callbacks``)
runs before that. It stops an unwritable ``run_dir`` with one line naming it, and notes which
folders this start makes, so that a refused start removes them again (``remove_made``): only
those, only while empty. Nothing that existed before the start is ever removed. While the run
writes it, ``claim_run_dir`` holds it against a second run started there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ..errors import InputError

logger = logging.getLogger(__name__)

# run_dir (absolute) -> the nearest folder above it that existed before this start
_existed_before: dict[Path, Path] = {}
# The descriptors of run_dir locks this process holds (``claim_run_dir``).
_held_locks: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the lock descriptors it inherited. A flock
    lives as long as any descriptor of it, so workers that outlive a killed main process until
    their watchdog notices (seconds) would keep the run_dir locked against its resume."""
    for fd in _held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunDirCallback(Callback):
    """Hydra's hooks before it makes the run's folder (the sweep's folder under ``-m``)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        prepare(config.hydra.run.dir)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        prepare(config.hydra.sweep.dir)


@contextmanager
def claim_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` while a run writes it: a second run started there (the same command
    twice, a requeued job whose first attempt still runs) is refused, not interleaved with it.

    A lock on the directory itself (no file is left behind), held by this process alone (forked
    children, DataLoader workers, drop it) and released by the kernel however the process ends;
    ranks other than 0 do not take it."""
    if os.environ.get("RANK", "0") != "0" or not run_dir.is_dir():
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"run_dir={str(run_dir)!r} is in use by another run that is still running (the "
                "same command started twice, or a requeued job whose first attempt has not "
                "ended); wait for it to end, or choose another run_dir"
            ) from None
        _held_locks.add(fd)
        yield
    finally:
        _held_locks.discard(fd)
        os.close(fd)


def run_stamp() -> str:
    """The default run_dir's name (``${run_stamp:}``): the start time, or under torchrun the
    date and torchrun's run id. Each rank resolves its config itself, seconds apart, and the
    ranks of one launch must share one run_dir (FSDP2's ranks each write their shards there)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"{time.strftime('%Y-%m-%d')}_{run_id}"
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def prepare(run_dir: str | os.PathLike) -> None:
    """Make ``run_dir`` and check it can be written, noting the folders made; an error that
    names ``run_dir`` and the fix (``SystemExit``: one line, no traceback) if it cannot."""
    path = Path(os.path.abspath(run_dir))
    existing = path
    while not os.path.lexists(existing):  # a file or link counts: never made here
        existing = existing.parent
    _existed_before[path] = existing
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        remove_made(path)
        raise SystemExit(
            f"error: run_dir={str(run_dir)!r} cannot be made or written ({error}); choose "
            "a run_dir in a folder you can write (default: runs/<domain>/<date_time>)"
        ) from None


def remove_made(run_dir: str | os.PathLike) -> list[Path]:
    """After a refused start: remove ``run_dir`` and the folders above it that this start made
    (``prepare``, or Hydra below a sweep's folder), innermost first, each only while empty.
    Returns what was removed; nothing if ``prepare`` never saw this run_dir."""
    path = Path(os.path.abspath(run_dir))
    bounds = [b for top, b in _existed_before.items() if top == path or top in path.parents]
    removed: list[Path] = []
    if not bounds:
        return removed
    while path != bounds[0] and bounds[0] in path.parents:
        try:
            path.rmdir()  # only an empty folder; a file or anything inside stops here
        except OSError:
            break
        removed.append(path)
        path = path.parent
    if removed:
        logger.debug("refused start: removed the folders it made: %s", ", ".join(map(str, removed)))
    return removed
