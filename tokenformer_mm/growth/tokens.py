"""Width growth: more parameter tokens per Pattention (docs/design.md, "Growth").

Growing a Pattention from ``n`` to ``n + m`` tokens appends ``m`` rows to its keys and values.

``init="exact"`` (default): new key rows are zero, new value rows get the layer's value init and
τ stays at ``sqrt(n)``. The new scores are 0, ``gelu(0) = 0`` and ``‖s‖`` is unchanged, so the
grown model computes exactly what the small one did, yet the new tokens train: their keys get a
gradient at the first step (``gelu'(0) = 1/2``), their values once the keys have moved.

``init="perturbed"``: exact, but the new keys start at ``perturbation`` times the layer's key
init std instead of zero, breaking the symmetry of the new tokens (they otherwise start alike);
the output moves by O(perturbation).

``init="official"``: new rows randomly initialised and τ recomputed as ``sqrt(n + m)``, as the
official code does; the output changes, which reproduces the paper's runs.

Under μP (``Pattention(base_tokens=b)``) the values are used as ``b / n · V``: growing to ``n + m``
lowers that multiplier, so the old value rows are multiplied by ``(n + m) / n``
(``carried_value_factor``) and each old token keeps its value exactly, while every token, old or
new, now trains at the rate of a layer built with ``n + m`` tokens (docs/design.md, "Growth").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..pattention import KINDS, Pattention
from .report import GrownLayer

INITS = ("exact", "perturbed", "official")
DEFAULT_PERTURBATION = 1e-2  # of the key init std, for init="perturbed"


def is_number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_init(init: str, perturbation: float = DEFAULT_PERTURBATION) -> None:
    if init not in INITS:
        raise ValueError(f"unknown growth init {init!r}; expected one of {INITS}")
    if init == "perturbed" and not (is_number(perturbation) and perturbation > 0):
        raise ValueError(
            f"init='perturbed' needs a finite positive perturbation, got {perturbation!r}"
        )


def pattention_layers(model: nn.Module) -> list[tuple[str, Pattention]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Pattention)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} contains no Pattention layers, so it has no parameter tokens "
            "to grow; grow a Tokenformer model"
        )
    return layers


def check_width_args(
    factor: float | None, num_tokens: int | Mapping[str, int] | None, kinds: Iterable[str]
) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if (factor is None) == (num_tokens is None):
        raise ValueError(
            "give exactly one of factor= (e.g. 2.0) or num_tokens= (int or per-kind dict)"
        )
    if factor is not None and not (is_number(factor) and factor > 0):
        raise ValueError(f"growth factor must be a finite positive number, got {factor!r}")
    if isinstance(num_tokens, Mapping):
        extra = [k for k in num_tokens if k not in kinds]
        if extra:
            raise ValueError(f"num_tokens names kinds {extra} that are not being grown {kinds}")
        counts = list(num_tokens.values())
    else:
        counts = [] if num_tokens is None else [num_tokens]
    for count in counts:
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise ValueError(f"token counts must be positive ints, got {count!r}")
    return kinds


def _target_tokens(
    layer: Pattention, factor: float | None, num_tokens: int | Mapping[str, int] | None
) -> int:
    if factor is not None:
        return round(layer.num_tokens * factor)
    if isinstance(num_tokens, Mapping):
        return num_tokens.get(layer.kind, layer.num_tokens)
    return int(num_tokens)


def carried_value_factor(layer: Pattention, old_tokens: int) -> float:
    """The factor on the first ``old_tokens`` value rows of ``layer``, grown from that count to
    its own: ``n_new / n_old`` under μP (its multiplier fell by as much), 1 otherwise."""
    return 1.0 if layer.base_tokens is None else layer.num_tokens / old_tokens


@torch.no_grad()
def fill_new_keys(layer: Pattention, start: int, init: str, perturbation: float) -> None:
    """The new key rows ``start:`` of the exact inits: zero, or small random ones (perturbed)."""
    if init == "perturbed":
        layer.key_tokens[start:].normal_(std=perturbation * layer.key_init_std)
    else:
        layer.key_tokens[start:].zero_()


@torch.no_grad()
def _fill_new_rows(layer: Pattention, start: int, init: str, perturbation: float) -> None:
    """Initialise the token rows ``start:`` of a layer that has just grown (keys, values and τ)."""
    layer.value_tokens[start:].normal_(std=layer.value_init_std)
    if init == "official":
        layer.key_tokens[start:].normal_(std=layer.key_init_std)
        layer.set_tau(math.sqrt(layer.num_tokens))
    else:
        fill_new_keys(layer, start, init, perturbation)


@torch.no_grad()
def resize_tokens(layer: Pattention, num_tokens: int) -> dict[nn.Parameter, nn.Parameter]:
    """Give the layer new, resized token Parameters (the first rows copied); returns each old
    Parameter with its successor.

    New ``nn.Parameter`` objects, not a ``.data`` swap: autograd caches one gradient accumulator
    per tensor, and a graph recorded before growth (a loss a training loop still holds) keeps the
    old one, shaped like the old tensor, alive; reusing the tensor would fail the next backward.
    """
    replaced = {}
    for name in ("key_tokens", "value_tokens"):
        old = getattr(layer, name)
        grown = old.new_empty(num_tokens, old.shape[1])
        keep = min(num_tokens, old.shape[0])
        grown[:keep] = old[:keep]
        new = nn.Parameter(grown, requires_grad=old.requires_grad)
        setattr(layer, name, new)
        old.grad = None  # a gradient of the old shape is meaningless now
        replaced[old] = new
    return replaced


def width_targets(
    model: nn.Module,
    factor: float | None,
    num_tokens: int | Mapping[str, int] | None,
    kinds: tuple[str, ...],
) -> tuple[list[tuple[str, Pattention]], dict[str, int]]:
    """The layers of ``kinds`` and each one's new token count; refuses a shrinking one."""
    selected = [(name, m) for name, m in pattention_layers(model) if m.kind in kinds]
    if not selected:
        raise ValueError(f"{type(model).__name__} has no Pattention layers of kinds {kinds}")
    targets = {name: _target_tokens(layer, factor, num_tokens) for name, layer in selected}
    shrinking = [
        f"{name} ({layer.num_tokens} -> {targets[name]})"
        for name, layer in selected
        if targets[name] < layer.num_tokens
    ]
    if shrinking:
        raise ValueError(f"growth cannot shrink layers: {', '.join(shrinking)}")
    return selected, targets


def widen(
    model: nn.Module,
    factor: float | None,
    num_tokens: int | Mapping[str, int] | None,
    kinds: tuple[str, ...],
    init: str,
    perturbation: float,
) -> tuple[
    list[GrownLayer],
    dict[nn.Parameter, nn.Parameter],
    list[str],
    dict[nn.Parameter, tuple[int, float]],
]:
    """Grow the Pattention layers of ``kinds`` in place: (layers grown, Parameters replaced,
    the softmax layers among them, which grow only approximately, and the value Parameters whose
    first rows were rescaled under μP: ``(rows, factor)``)."""
    selected, targets = width_targets(model, factor, num_tokens, kinds)
    layers, replaced, softmax, rescaled = [], {}, [], {}
    for name, layer in selected:
        old, new = layer.num_tokens, targets[name]
        if new == old:
            continue
        replaced.update(resize_tokens(layer, new))
        factor = carried_value_factor(layer, old)
        if factor != 1.0:
            with torch.no_grad():
                layer.value_tokens[:old] *= factor
            rescaled[layer.value_tokens] = (old, factor)
        _fill_new_rows(layer, old, init, perturbation)
        if layer.norm == "softmax":
            softmax.append(name)
        added = (new - old) * (layer.in_features + layer.out_features)
        layers.append(GrownLayer(name, layer.kind, old, new, added))
    return layers, replaced, softmax, rescaled


def token_counts_by_kind(module: nn.Module) -> dict[str, set[int]]:
    """The token counts of each kind of Pattention layer below ``module`` (one count per kind
    unless growth was uneven)."""
    counts: dict[str, set[int]] = {}
    for layer in module.modules():
        if isinstance(layer, Pattention):
            counts.setdefault(layer.kind, set()).add(layer.num_tokens)
    return counts


def record_token_counts(model: nn.Module) -> None:
    """Each tower's own record of its token counts follows its layers: every module of ``model``
    with a dataclass ``config`` holding ``<kind>_tokens`` fields (what ``save_pretrained``
    writes) gets the count of each kind whose layers below it all have the same one."""
    for tower in model.modules():
        config = getattr(tower, "config", None)
        if not dataclasses.is_dataclass(config):
            continue
        fields = {f.name for f in dataclasses.fields(config)}
        changes = {
            f"{kind}_tokens": next(iter(n))
            for kind, n in token_counts_by_kind(tower).items()
            if len(n) == 1 and f"{kind}_tokens" in fields
        }
        if changes:
            tower.config = dataclasses.replace(config, **changes)
