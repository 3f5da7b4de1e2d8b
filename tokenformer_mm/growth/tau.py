"""τ after exact growth: moved from the small layer's to the grown layer's own, over steps.

Exact width growth keeps each layer's τ = sqrt(n_small) (``tokens.py``): the only τ at which zero
keys leave the function unchanged. A layer built with ``n`` tokens has τ = sqrt(n), and each of
its normalised scores is of order 1; a grown layer whose new keys have learned spreads the same
norm τ over ``n`` scores, each of order sqrt(n_small / n): GELU sees smaller inputs than in a
layer built at that size. Measured (docs/growth.md): x4 arms that keep τ end 0.16-0.19 nats/byte
above the big model's frontier, the official init (τ = sqrt(n) at once, random keys) near it.

A *ramp* keeps growth exact at the grow step and then moves τ geometrically to sqrt(n) over
``steps``: ``τ(f) = τ_from^(1 - f) · τ_to^f`` with ``f = (step - grow step) / steps``, so the
function changes by a small amount each step instead of at once. The ramp is a record (the
layers' τ at both ends), kept by its owner (the engine keeps it with the growth event in the
run's state), and a pure function of the step: a resumed run sets the same τ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from ..pattention import Pattention


def tau_ramp_ends(model: nn.Module) -> dict[str, list[float]]:
    """Each Pattention layer whose τ is not sqrt(its token count): ``[τ now, sqrt(n)]``."""
    return {
        name: [layer.tau_value, math.sqrt(layer.num_tokens)]
        for name, layer in model.named_modules()
        if isinstance(layer, Pattention) and layer.tau_value != math.sqrt(layer.num_tokens)
    }


def set_ramped_tau(model: nn.Module, ends: Mapping[str, Sequence[float]], fraction: float) -> None:
    """τ of each layer in ``ends`` at ``fraction`` (clipped to [0, 1]) of the way, geometric."""
    fraction = min(max(fraction, 0.0), 1.0)
    for name, (start, end) in ends.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, Pattention):
            raise ValueError(f"a τ ramp names {name!r}, which is a {type(layer).__name__}")
        layer.set_tau(start ** (1 - fraction) * end**fraction)


def ramp_record(model: nn.Module, steps: int) -> dict[str, dict]:
    """A growth record's entry for a ramp over ``steps`` from now (``{}`` for none)."""
    return {"tau_ramp": {"steps": steps, "layers": tau_ramp_ends(model)}} if steps else {}


def ramp_tau(model: nn.Module, events: Sequence[Mapping], step: int) -> None:
    """Before the update at ``step``: τ of every ramp under way, for growth records holding
    ``step`` and ``tau_ramp = {"steps", "layers": tau_ramp_ends(...)}`` (the engine's)."""
    for event in events:
        ramp = event.get("tau_ramp")
        if ramp and event["step"] < step <= event["step"] + ramp["steps"]:
            set_ramped_tau(model, ramp["layers"], (step - event["step"]) / ramp["steps"])
