"""``grow_model`` (one call that deepens and widens a model, its optimizer following) and
``grow_depth`` (depth alone)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..initialization import seeded_rng
from ..pattention import KINDS
from .depth import check_depth_args, deepen
from .optimizer import grow_optimizer_state
from .report import GrowthReport, count_params
from .shape import model_shape
from .tokens import (
    DEFAULT_PERTURBATION,
    check_init,
    check_width_args,
    record_token_counts,
    widen,
    width_targets,
)

logger = logging.getLogger(__name__)


def grow_model(
    model: nn.Module,
    factor: float | None = None,
    num_tokens: int | Mapping[str, int] | None = None,
    kinds: Iterable[str] = KINDS,
    init: str = "exact",
    optimizer: torch.optim.Optimizer | None = None,
    perturbation: float = DEFAULT_PERTURBATION,
    depth: int = 1,
    depth_init: str = "exact",
    seed: int | None = None,
) -> GrowthReport:
    """Grow every Pattention layer of ``model`` whose ``kind`` is in ``kinds``, in place; with
    ``depth`` > 1 first make it ``depth`` times deeper (``grow_depth``, ``depth_init``).

    Args:
        model: any module tree containing Pattention layers (either tower, a CLIP model, a
            model wrapped in DDP).
        factor: multiply each selected layer's token count by this (rounded), e.g. 2.0.
        num_tokens: alternatively the new count: one int for all selected layers, or a dict per
            kind, e.g. ``{"qkv": 384, "ffn": 1536}``.
        kinds: which layer kinds to grow (``qkv``, ``proj``, ``ffn``).
        init: ``"exact"`` (output unchanged), ``"perturbed"`` (new keys at ``perturbation`` x
            the key init std: output moves by O(perturbation)) or ``"official"`` (random rows,
            τ = sqrt(new n)).
        optimizer: if given, its state is grown alongside (``grow_optimizer_state``).
        perturbation: the new keys' scale for ``init="perturbed"``, relative to the key init.
        depth, depth_init: as ``grow_depth``'s ``factor`` and ``init``; then ``factor`` and
            ``num_tokens`` may both be None (depth only). The report says what grew.
        seed: draw the new rows from ``torch.manual_seed(seed)`` and leave the caller's RNG as
            it was: under DDP or FSDP2 every rank passes the same seed and grows alike. None
            draws from the global RNG.

    Raises ``ValueError`` for a shrinking or non-positive size, or a model without Pattention
    layers. ``softmax`` layers cannot grow exactly (``exp(0) != 0``) and grow with a warning.

    The grown layers get new ``nn.Parameter`` objects, so a graph recorded before growth (a
    loop's last ``loss``) may stay alive without disturbing later steps (it cannot itself be
    backpropagated afterwards). Pass the ``optimizer``, or call ``grow_optimizer_state(optimizer,
    report)``, or build a new one: an optimizer that is not told keeps the old Parameters, which
    no longer receive gradients. Hooks registered on the old Parameters do not carry over.
    """
    check_init(init, perturbation)
    refuse_adapted(model)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be an int >= 1 (1: no depth growth), got {depth!r}")
    widening = depth == 1 or factor is not None or num_tokens is not None
    kinds = check_width_args(factor, num_tokens, kinds) if widening else tuple(kinds)
    if depth != 1:
        check_depth_args(depth, depth_init)
    if widening:  # every check before the model changes (depth growth copies these layers)
        width_targets(model, factor, num_tokens, kinds)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"growth seed must be an int or None, got {seed!r}")
    rng = seeded_rng(seed) if seed is not None else contextlib.nullcontext()
    report = GrowthReport(init, params_before=count_params(model), params_after=0)
    with rng:
        if depth != 1:
            report.depth = deepen(model, depth, depth_init, optimizer)
        if widening:
            report.layers, report.replaced, softmax, report.rescaled = widen(
                model, factor, num_tokens, kinds, init, perturbation
            )
            record_token_counts(model)
            if softmax and init != "official":
                warnings.warn(
                    f"{len(softmax)} softmax Pattention layers (e.g. {softmax[0]}) grew "
                    "approximately: softmax gives zero-key tokens weight exp(0) > 0, so their "
                    "output changes; use an l2_norm_gelu or gelu_l2_norm model for exact growth",
                    stacklevel=2,
                )
    report.params_after = count_params(model)
    report.shape = model_shape(model)
    if optimizer is not None:
        grow_optimizer_state(optimizer, report)
    logger.info("%s", report)
    return report


def grow_depth(
    model: nn.Module,
    factor: int = 2,
    init: str = "exact",
    optimizer: torch.optim.Optimizer | None = None,
) -> GrowthReport:
    """Make a tower ``factor`` times deeper, in place: each block is followed by ``factor - 1``
    new ones.

    ``init="exact"``: a new block is a freshly initialised copy of the block before it with its
    ``proj`` and FFN value tokens zero, so both residual branches add 0 and the block is the
    identity: the model computes what it did. It trains: the zero values get gradients at the
    first step, and the rest once they have moved. ``init="stack"``: a new block is a copy of
    the block before it (depth stacking, as in G_stack; not exact).

    The model's metadata follow: a dataclass ``config`` with a ``depth`` field and timm's
    ``feature_info`` list. With ``optimizer``, the new parameters join the parameter groups of
    the block they copy, with fresh optimizer state.
    """
    refuse_adapted(model)
    before = count_params(model)
    depth = deepen(model, factor, init, optimizer)
    report = GrowthReport(init, before, count_params(model), depth=depth, shape=model_shape(model))
    logger.info("%s", report)
    return report


def refuse_adapted(model: nn.Module) -> None:
    """Growth resizes a layer's own tokens, not the adapters beside it (their μP multiplier
    would move under them, a new block would copy them): merge or remove them first."""
    from ..adapters.manage import adapter_names  # the adapters build on growth

    adapted = adapter_names(model)
    if adapted:
        raise ValueError(
            f"the model carries token adapters {adapted}: merge_adapter or remove_adapter them "
            "before growing it"
        )
