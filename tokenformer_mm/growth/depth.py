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
    model: nn.Module,
    factor: int,
    init: str,
    optimizer: torch.optim.Optimizer | None,
    container: str | None = None,
) -> tuple[int, int]:
    """``grow_depth``'s work on the model's one block list (or the one named ``container``);
    returns the depth (before, after)."""
    check_depth_args(factor, init)
    if container is None:
        name, blocks = block_container(model)
    else:
        name, blocks = container, model.get_submodule(container)
    groups = optimizer.param_groups if optimizer is not None else []
    group_of = {id(param): group for group in groups for param in group["params"]}
    grown: list[TokenformerBlock] = []
    joining: list[tuple[dict, nn.Parameter]] = []  # into the optimizer once every block is built
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
                    joining.append((group_of[id(old)], param))
    for group, param in joining:
        group["params"].append(param)
    grown_blocks = (
        nn.Sequential(*grown) if isinstance(blocks, nn.Sequential) else nn.ModuleList(grown)
    )
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], grown_blocks)
    # Each group in the model's parameter order, as a fresh optimizer over the grown model would
    # have it: an optimizer state_dict saved now then loads into that optimizer on resume.
    order = {id(param): index for index, param in enumerate(model.parameters())}
    for group in groups:
        group["params"].sort(key=lambda param: order.get(id(param), len(order)))
    _update_metadata(parent, name.rpartition(".")[2], len(grown))
    return len(blocks), len(grown)


def _update_metadata(model: nn.Module, name: str, depth: int) -> None:
    """The depth as the module holding the blocks (a tower, one of ours) records it: a dataclass
    ``config`` with a ``depth`` field (what ``save_pretrained`` writes) and timm's
    ``feature_info`` list (``forward_intermediates``)."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and any(
        f.name == "depth" for f in dataclasses.fields(config)
    ):
        model.config = dataclasses.replace(config, depth=depth)
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and "module" in feature_info[0]:
        info = feature_info[0]
        model.feature_info = [{**info, "module": f"{name}.{i}"} for i in range(depth)]


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
