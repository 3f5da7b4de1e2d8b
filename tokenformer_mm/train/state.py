"""The run's own counters, one stateful part of the Trainer beside the model, the optimizer, the
schedule, the data cursor and the EMA: what a checkpoint restores of the run itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Optimizer steps taken, training FLOPs so far (all ranks), the growth events and the steps
    whose update was skipped for a non-finite loss or gradient (``train.nonfinite=skip``)."""

    step: int = 0
    total_flops: float = 0
    growth_events: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_skipped: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_flops": self.total_flops,
            "growth_events": list(self.growth_events),
            "nonfinite_skipped": self.nonfinite_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.total_flops = int(state["step"]), state["total_flops"]
        self.growth_events = list(state["growth_events"])
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))  # older checkpoints: 0
