"""What a growth changed: the layers that grew, the parameter counts, the Parameters replaced."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class GrownLayer:
    """One Pattention layer that grew."""

    name: str
    kind: str
    old_tokens: int
    new_tokens: int
    added_params: int


@dataclass
class GrowthReport:
    """What ``grow_model`` / ``grow_depth`` / ``load_grown`` changed.

    ``shape`` is the model's shape record after the growth (``shape.model_shape``: blocks per
    block list, tokens per Pattention layer), what a checkpoint of the grown model carries.
    ``replaced`` maps each Parameter a width growth replaced to its successor (the grown layers
    get new Parameters): ``grow_optimizer_state(optimizer, report)`` follows it to move an
    optimizer that was not passed to the growth. ``rescaled`` maps each new value Parameter of a
    μP layer to ``(rows, factor)``: its first ``rows`` rows were multiplied by ``factor``, and
    the optimizer's moments of those rows follow.
    """

    init: str
    params_before: int
    params_after: int
    layers: list[GrownLayer] = field(default_factory=list)
    depth: tuple[int, int] | None = None  # (before, after) for a depth growth
    shape: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    replaced: dict[nn.Parameter, nn.Parameter] = field(default_factory=dict, repr=False)
    rescaled: dict[nn.Parameter, tuple[int, float]] = field(default_factory=dict, repr=False)

    @property
    def added_params(self) -> int:
        return self.params_after - self.params_before

    def counts(self) -> dict[str, int]:
        """The figures a run's ``growth.jsonl`` records."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "layers": len(self.layers),
        }

    def __str__(self) -> str:
        params = (
            f"{self.params_before:,} -> {self.params_after:,} parameters (+{self.added_params:,})"
        )
        grew = []
        if self.depth is not None:
            grew.append(f"depth {self.depth[0]} -> {self.depth[1]}")
        if self.layers:
            tokens = sorted({(g.kind, g.old_tokens, g.new_tokens) for g in self.layers})
            per_kind = ", ".join(f"{kind} {old}->{new}" for kind, old, new in tokens)
            grew.append(f"{len(self.layers)} Pattention layers ({per_kind})")
        return f"grew {' and '.join(grew) or 'nothing'} with init={self.init}: {params}"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
