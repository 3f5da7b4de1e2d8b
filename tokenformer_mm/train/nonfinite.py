"""What a run does when training diverges: a step whose loss or gradient norm is not finite never
updates the weights, and weights that are not finite never reach a checkpoint, so the newest
checkpoint is always one to resume from (``train.nonfinite``).

Every rank decides alike: the loss is averaged over the ranks and the gradient norm is of the
synchronised gradients, and the weights' check is summed over the ranks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint_layout import newest_checkpoint
from ..distributed import sum_over_ranks
from . import parallel

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training diverged: the message names the step, the values and where to resume from."""


@dataclass
class NonFiniteGuard:
    """``policy="stop"``: the first non-finite step ends the run; ``"skip"``: such a step makes
    no update, and ``patience`` of them in a row end the run."""

    policy: str
    patience: int
    ckpt_dir: Path
    streak: int = 0

    def allows_update(self, step: int, loss: float, grad_norm: float) -> bool:
        """Whether step ``step`` may update the weights; raises ``NonFiniteError`` to stop."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.streak = 0
            return True
        self.streak += 1
        values = f"the loss is {loss} and the gradient norm {grad_norm}"
        if self.policy == "stop":
            raise NonFiniteError(self._message(step, f"{values} (train.nonfinite=stop)"))
        if self.streak >= self.patience:
            what = f"{values}, step {self.streak} of such steps in a row (train.nonfinite_patience)"
            raise NonFiniteError(self._message(step, what))
        logger.warning("step %d: %s; its update is skipped (train.nonfinite=skip)", step, values)
        return False

    def columns(self, skipped: int) -> dict[str, int]:
        """The updates skipped so far, a metrics.csv column of runs that may skip them."""
        return {"nonfinite/skipped": skipped} if self.policy == "skip" else {}

    def check_weights(self, model: nn.Module, step: int) -> None:
        """Refuse to checkpoint weights that are not finite (the update of a step with a finite
        loss can still overflow them)."""
        params = list(model.parameters())
        local = sum(int(not torch.isfinite(parallel.local_value(p.detach())).all()) for p in params)
        bad = sum_over_ranks({"bad": torch.tensor(float(local), device=params[0].device)})["bad"]
        if bad:
            raise NonFiniteError(
                self._message(step, f"{int(bad)} parameter tensors are not finite after its update")
            )

    def _message(self, step: int, what: str) -> str:
        newest = newest_checkpoint(self.ckpt_dir)
        where = (
            f"the newest checkpoint, {newest}, holds finite weights: resume from it (resume=true) "
            "with a lower optim.lr or stronger clipping (optim.grad_clip)"
            if newest is not None
            else "the run has no checkpoint yet: start again with a lower optim.lr or stronger "
            "clipping (optim.grad_clip)"
        )
        return (
            f"training diverged at step {step}: {what}; the run stops before writing anything "
            f"non-finite. {where}, or set train.nonfinite=skip to skip such steps"
        )
