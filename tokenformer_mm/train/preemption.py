"""Stopping a run cleanly when its scheduler says so (``train.stop_signals``).

SLURM, Kubernetes and spot instances send SIGTERM (SLURM's ``--signal`` often SIGUSR1) some time
before they kill a job. The first such signal asks the run to stop: every rank finishes the step
it is in, the ranks agree on the stop (a rank may have been signalled alone), one checkpoint is
written, and the run ends with ``Preempted``, which ``scripts/train.py`` turns into exit code
``PREEMPTED_EXIT_CODE``. A second signal ends the process at once, as if nothing caught it.

The same signal again within ``REPEAT_WINDOW_S`` is the same request, not a second one: under
SLURM every process of a job gets the signal, and torchrun forwards its own copy to its workers.
DataLoader workers leave these signals to the main process
(``distributed.leave_stop_signals_to_main``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from ..distributed import rank_and_world_size, sum_over_ranks

logger = logging.getLogger(__name__)

# sysexits.h's EX_TEMPFAIL: "a temporary failure; the user is invited to retry" (resume=true).
PREEMPTED_EXIT_CODE = 75
REPEAT_WINDOW_S = 1.0


class Preempted(Exception):
    """The run stopped on a signal after writing ``checkpoint`` at ``step``."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"{signal_name} received: stopped after step {step}, checkpoint {checkpoint}; "
            "continue with the same run_dir and resume=true"
        )


class StopSignals:
    """While entered (``with``), the signals in ``names`` request a stop instead of killing.

    ``stop_requested`` is agreed over the ranks (a collective: every rank calls it each step).
    Entered outside the main thread, where Python cannot install handlers, it catches nothing and
    says so.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.signals = [signal.Signals[name] for name in names]
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.signals and threading.current_thread() is not threading.main_thread():
            logger.warning("not in the main thread: %s will not stop the run cleanly", self.names)
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def names(self) -> str:
        return ", ".join(sig.name for sig in self.signals) or "no signal"

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler may interrupt the logging module holding its lock.
        sig, now = signal.Signals(signum), time.monotonic()
        if self.received is None:
            self.received, self._received_at = sig, now
        elif sig != self.received or now - self._received_at > REPEAT_WINDOW_S:
            signal.signal(sig, signal.SIG_DFL)  # the second request: die of it at once
            os.kill(os.getpid(), sig)

    def stop_requested(self, device: torch.device) -> bool:
        """Whether any rank received a stop signal (a collective under torchrun)."""
        local = self.received is not None
        if rank_and_world_size()[1] == 1:  # nothing to agree on: no tensor, no sync
            return local
        return sum_over_ranks({"stop": torch.tensor(float(local), device=device)})["stop"] > 0

    def preempted(self, step: int, checkpoint: Path | None) -> Preempted:
        """The end of a run stopped after ``step``, its last checkpoint ``checkpoint``."""
        name = self.received.name if self.received is not None else "another rank's stop signal"
        return Preempted(name, step, checkpoint)
