"""Depth growth: a tower made deeper by inserting identity blocks (or copies) after its blocks."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping

import torch
from torch import nn

from ..block import TokenformerBlock
from ..pattention import Pattention
from .report import GrowthReport, count_params

logger = logging.getLogger(__name__)

DEPTH_INITS = ("exact", "stack")


def block_containers(model: nn.Module) -> list[tuple[str, nn.ModuleList | nn.Sequential]]:
    """Every ``ModuleList`` / ``Sequential`` of the model made of Tokenformer blocks."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential))
        and len(module) > 0
        and all(isinstance(child, TokenformerBlock) for child in module)
    ]


def block_container(model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """The one ``ModuleList`` / ``Sequential`` of the model made of Tokenformer blocks."""
    found = block_containers(model)
    if len(found) != 1:
        names = [name for name, _ in found]
        raise ValueError(
            f"grow_depth needs exactly one list of TokenformerBlocks in {type(model).__name__}, "
            f"found {len(found)} ({names}); grow a tower (e.g. clip_model.text), not the model"
        )
    return found[0]


def check_depth_args(factor: int, init: str) -> None:
    if init not in DEPTH_INITS:
        raise ValueError(f"unknown depth-growth init {init!r}; expected one of {DEPTH_INITS}")
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"depth growth factor must be an int >= 2, got {factor!r}")


@torch.no_grad()
def deepen(
    model: nn.Module, factor: int, init: str, optimizer: torch.optim.Optimizer | None
) -> tuple[int, int]:
    """``grow_depth``'s work; returns the depth (before, after)."""
    check_depth_args(factor, init)
    name, blocks = block_container(model)
    groups = optimizer.param_groups if optimizer is not None else []
    group_of = {id(param): group for group in groups for param in group["params"]}
    grown: list[TokenformerBlock] = []
    for block in list(blocks):
        grown.append(block)
        for _ in range(factor - 1):
            new = copy.deepcopy(block)
            if init == "exact":
                for layer in new.modules():
                    if isinstance(layer, Pattention):
                        layer.reset_parameters()
                new.zero_residual_branches()
            grown.append(new)
            for old, param in zip(block.parameters(), new.parameters(), strict=True):
                if id(old) in group_of:
                    group_of[id(old)]["params"].append(param)
    container = nn.Sequential(*grown) if isinstance(blocks, nn.Sequential) else nn.ModuleList(grown)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], container)
    # Each group in the model's parameter order, as a fresh optimizer over the grown model would
    # have it: an optimizer state_dict saved now then loads into that optimizer on resume.
    order = {id(param): index for index, param in enumerate(model.parameters())}
    for group in groups:
        group["params"].sort(key=lambda param: order.get(id(param), len(order)))
    _update_metadata(model, name, len(grown))
    return len(blocks), len(grown)


def _update_metadata(model: nn.Module, name: str, depth: int) -> None:
    """The model's own record of its depth: a dataclass ``config`` with a ``depth`` field (what
    ``save_pretrained`` writes) and timm's ``feature_info`` list (``forward_intermediates``)."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and any(
        f.name == "depth" for f in dataclasses.fields(config)
    ):
        model.config = dataclasses.replace(config, depth=depth)
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and "module" in feature_info[0]:
        info = feature_info[0]
        model.feature_info = [{**info, "module": f"{name}.{i}"} for i in range(depth)]


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
    before = count_params(model)
    depth = deepen(model, factor, init, optimizer)
    report = GrowthReport(init, before, count_params(model), depth=depth)
    logger.info("%s", report)
    return report


def deepened_keys(
    state_dict: Mapping[str, torch.Tensor], prefix: str, factor: int, init: str
) -> dict[str, torch.Tensor]:
    """``state_dict`` of a shallower model with its blocks under ``prefix`` renumbered as
    ``grow_depth(factor, init)`` places them: old block ``i`` becomes block ``i * factor``, and
    with ``init="stack"`` its copies follow it. The exact init's new blocks are not in it."""
    out = {}
    copies = range(factor) if init == "stack" else range(1)
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        for j in copies:
            out[f"{prefix}{int(index) * factor + j}.{rest}"] = value
    return out


def match_depth(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Deepen ``model`` to the block count in ``state_dict`` (a run that grew in depth).

    Returns the depth factor applied (1: none). The new blocks' values are placeholders for the
    checkpoint's; a checkpoint whose depth is not a multiple of the model's is an error.
    """
    containers = block_containers(model)
    if len(containers) != 1:  # no blocks, or several towers (CLIP): grown tower by tower
        return 1
    name, blocks = containers[0]
    prefix = f"{name}."
    indices = {
        int(key[len(prefix) :].split(".", 1)[0]) for key in state_dict if key.startswith(prefix)
    }
    saved = max(indices) + 1 if indices else len(blocks)
    if saved == len(blocks):
        return 1
    if saved < len(blocks) or saved % len(blocks):
        raise ValueError(
            f"the checkpoint has {saved} blocks under {name!r}, the model {len(blocks)}: a run "
            "that grew in depth saves a multiple of its initial depth; create the model with "
            f"depth={saved} (and grow it afterwards with grow_depth if you want more) or load "
            "the matching checkpoint"
        )
    deepen(model, saved // len(blocks), "stack", None)
    return saved // len(blocks)
