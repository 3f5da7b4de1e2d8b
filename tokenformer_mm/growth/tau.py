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
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from ..pattention import Pattention
from .report import GrowthReport


def tau_ramp_ends(model: nn.Module, names: Iterable[str]) -> dict[str, list[float]]:
    """Of the Pattention layers ``names`` (those a growth widened), each whose τ is not
    sqrt(its token count): ``[τ now, sqrt(n)]``."""
    ends = {}
    for name in names:
        layer = model.get_submodule(name)
        target = math.sqrt(layer.num_tokens)
        if not math.isclose(layer.tau_value, target, rel_tol=1e-6):
            ends[name] = [layer.tau_value, target]
    return ends


def set_ramped_tau(model: nn.Module, ends: Mapping[str, Sequence[float]], fraction: float) -> None:
    """τ of each layer in ``ends`` at ``fraction`` (clipped to [0, 1]) of the way, geometric."""
    fraction = min(max(fraction, 0.0), 1.0)
    for name, (start, end) in ends.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, Pattention):
            raise ValueError(f"a τ ramp names {name!r}, which is a {type(layer).__name__}")
        layer.set_tau(start ** (1 - fraction) * end**fraction)


def ramp_record(model: nn.Module, steps: int, report: GrowthReport) -> dict[str, dict]:
    """A growth record's entry for a ramp over ``steps`` from now of the layers ``report`` says
    were widened (``{}`` for none)."""
    if not steps:
        return {}
    ends = tau_ramp_ends(model, [layer.name for layer in report.layers])
    return {"tau_ramp": {"steps": steps, "layers": ends}}


def ramp_tau(events: Sequence[Mapping], step: int, *models: nn.Module) -> None:
    """Before the update at ``step``: τ of every ramp under way in ``models`` (the model and its
    EMA: τ is set, never averaged), for growth records holding ``step`` and ``tau_ramp =
    ramp_record(...)["tau_ramp"]`` (the engine's). A layer in several ramps follows the newest
    that has begun (which started from where the older one had brought it)."""
    newest: dict[str, Mapping] = {}
    for event in events:
        if event.get("tau_ramp") and event["step"] <= step:
            newest.update(dict.fromkeys(event["tau_ramp"]["layers"], event))
    for name, event in newest.items():
        ramp = event["tau_ramp"]
        if step <= event["step"] + ramp["steps"]:
            fraction = (step - event["step"]) / ramp["steps"]
            for model in models:
                set_ramped_tau(model, {name: ramp["layers"][name]}, fraction)
