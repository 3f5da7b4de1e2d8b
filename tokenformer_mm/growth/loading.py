"""Loading across sizes: a smaller model's checkpoint into a larger model (a warm start), and a
companion (the EMA) laid into a grown model's state. A checkpoint into the model it was saved
from, grown or not, is ``shape.load_resized``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from .depth import block_container, deepened_keys
from .report import GrownLayer, GrowthReport, count_params
from .shape import model_shape
from .tokens import (
    DEFAULT_PERTURBATION,
    carried_value_factor,
    check_init,
    fill_new_keys,
    pattention_layers,
)

logger = logging.getLogger(__name__)


@torch.no_grad()
def load_grown(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    init: str = "exact",
    perturbation: float = DEFAULT_PERTURBATION,
) -> GrowthReport:
    """Load a smaller model's ``state_dict`` into a larger ``model`` with more parameter tokens.

    Every parameter-token tensor is copied into the first rows of the model's; the remaining rows
    follow ``init``: ``"exact"`` zeroes the new keys and keeps the checkpoint's τ, so the larger
    model computes what the smaller one did; ``"official"`` keeps the model's own random rows and
    τ = sqrt(n) of the larger size. Every other tensor must match in shape. All mismatches (missing
    or unexpected keys, shapes) are reported in one ``ValueError``.
    """
    check_init(init, perturbation)
    layers = {f"{name}." if name else "": m for name, m in pattention_layers(model)}
    token_keys = {prefix + t for prefix in layers for t in ("key_tokens", "value_tokens", "tau")}
    target = model.state_dict()
    problems = [f"missing from checkpoint: {k}" for k in target if k not in state_dict]
    problems += [f"unexpected in checkpoint: {k}" for k in state_dict if k not in target]
    for key, src in state_dict.items():
        dst = target.get(key)
        if dst is None or src.shape == dst.shape:
            continue
        if key in token_keys and _is_row_prefix(src, dst):
            continue  # a prefix of the larger model's tokens
        problems.append(
            f"{key}: checkpoint {tuple(src.shape)} does not fit model {tuple(dst.shape)}"
        )
    if problems:
        raise ValueError(
            f"cannot load the checkpoint into {type(model).__name__}:\n  " + "\n  ".join(problems)
        )

    for key, src in state_dict.items():
        if key not in token_keys:
            target[key].copy_(src)
    report = GrowthReport(init=init, params_before=0, params_after=count_params(model))
    for prefix, layer in layers.items():
        old = state_dict[prefix + "key_tokens"].shape[0]
        layer.key_tokens[:old].copy_(state_dict[prefix + "key_tokens"])
        layer.value_tokens[:old].copy_(state_dict[prefix + "value_tokens"])
        layer.value_tokens[:old] *= carried_value_factor(layer, old)
        if old == layer.num_tokens or init != "official":
            fill_new_keys(layer, old, init, perturbation)
            layer.set_tau(float(state_dict[prefix + "tau"]))
        else:  # official: the model's own random rows, τ of the larger size
            layer.set_tau(math.sqrt(layer.num_tokens))
        if old < layer.num_tokens:
            added = (layer.num_tokens - old) * (layer.in_features + layer.out_features)
            report.layers.append(
                GrownLayer(prefix.rstrip("."), layer.kind, old, layer.num_tokens, added)
            )
    report.params_before = report.params_after - sum(layer.added_params for layer in report.layers)
    report.shape = model_shape(model)
    logger.info("%s", report)
    return report


def _is_row_prefix(small: torch.Tensor, large: torch.Tensor) -> bool:
    return (
        small.dim() == large.dim() >= 1
        and small.shape[1:] == large.shape[1:]
        and (small.shape[0] < large.shape[0])
    )


def grown_companion_state(
    grown: nn.Module,
    companion: Mapping[str, torch.Tensor],
    depth: int = 1,
    depth_init: str = "exact",
) -> dict[str, torch.Tensor]:
    """The state of a companion of a model before growth (its EMA), laid into ``grown``, the
    model after: the companion's values where the old model had them (the first rows of grown
    token tensors; old block ``i`` at ``i * depth``, its copies too for ``depth_init="stack"``),
    ``grown``'s own values elsewhere and for every τ (which growth sets, no average moves). The
    old value rows of a μP layer are rescaled as the growth rescaled the model's.
    """
    if depth > 1:
        prefix = block_container(grown)[0] + "."
        companion = deepened_keys(companion, prefix, depth, depth_init)
    layers = dict(pattention_layers(grown))
    out = {}
    for key, value in grown.state_dict().items():
        old = companion.get(key)
        if old is None or key.rpartition(".")[2] == "tau":
            out[key] = value.clone()
        elif old.shape == value.shape:
            out[key] = old.clone()
        elif _is_row_prefix(old, value):
            name, _, tensor = key.rpartition(".")
            if tensor == "value_tokens":
                old = old * carried_value_factor(layers[name], old.shape[0])
            out[key] = torch.cat([old, value[old.shape[0] :]])
        else:
            raise ValueError(
                f"{key}: the companion's {tuple(old.shape)} is not a row prefix of the grown "
                f"model's {tuple(value.shape)}"
            )
    return out
