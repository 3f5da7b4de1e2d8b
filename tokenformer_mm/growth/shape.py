"""A model's shape record: what growth changes, as plain data that checkpoints carry.

Growth changes two things, and nothing else, about a model's architecture: how many blocks each
list of Tokenformer blocks holds and how many parameter tokens each Pattention layer has. The
record is exactly that::

    {"depth": {"blocks": 8}, "tokens": {"blocks.0.attn.q": 192, ...}}

plus, for a model under μP (``Pattention(base_tokens=...)``), the base token count of each layer,
``"base_tokens": {"blocks.0.attn.q": 128, ...}``: with the token counts it fixes the multiplier
of the values, so a file is never read with another one. A record without it (the paper's
parametrization, and every file written before μP) has none.

``model_shape`` reads it from a live model (so it can never disagree with the weights),
``GrowthReport.shape`` is the record after a growth, every weights file the library writes
carries it (``tokenformer_mm/weights.py``), and ``fit_to_shape`` gives a model built at its initial
size the recorded shape: the one rule behind every loader (``load_resized``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from ..pattention import Pattention, value_multiplier
from .depth import block_containers, deepen
from .tokens import record_token_counts, resize_tokens

logger = logging.getLogger(__name__)

# {"depth": {block list: blocks}, "tokens": {layer: tokens}[, "base_tokens": {layer: base}]}
Shape = dict[str, dict[str, int]]


def model_shape(model: nn.Module) -> Shape:
    """The shape record of ``model`` as it is now (any module tree; empty for a model without
    Tokenformer blocks or Pattention layers)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Pattention)]
    shape = {
        "depth": {name: len(blocks) for name, blocks in block_containers(model)},
        "tokens": {name: layer.num_tokens for name, layer in layers},
    }
    bases = {name: layer.base_tokens for name, layer in layers if layer.base_tokens is not None}
    if bases:
        shape["base_tokens"] = bases
    return shape


def check_base_tokens(layers: Mapping[str, Pattention], shape: Shape) -> None:
    """Refuse a record whose values were trained under another multiplier than the model's.

    A layer whose base differs from the record's but whose multiplier is the same at the
    recorded count (e.g. μP at its base count and the paper's math) computes the same function
    from the same weights and keeps the model's base (it applies from the next growth on).
    """
    saved = shape.get("base_tokens", {})
    for name, count in shape.get("tokens", {}).items():
        layer = layers[name]
        base = saved.get(name)
        if value_multiplier(base, count) != value_multiplier(layer.base_tokens, count):
            model = "the paper's" if layer.base_tokens is None else "μP's"
            trained = "the paper's" if base is None else "μP's"
            raise ValueError(
                f"{name} was saved under {trained} parametrization (base_tokens={base}, "
                f"{count} tokens) and the model is built under {model} "
                f"(base_tokens={layer.base_tokens}): its values would be scaled by "
                f"{value_multiplier(layer.base_tokens, count):g} instead of "
                f"{value_multiplier(base, count):g}; build the model with "
                f"parametrization={'standard' if base is None else 'mup'!r}"
            )


def state_shape(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Shape:
    """The shape record of a checkpoint that carries none (one written before records), read
    from its tensors in ``model``'s terms (its block lists); the tensors may be meta. Tensors
    say nothing of a parametrization: the layers' base token counts are taken as the model's,
    as any architecture setting of the model it is loaded into."""
    depth = {}
    for name, blocks in block_containers(model):
        prefix = f"{name}."
        indices = {
            int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)
        }
        depth[name] = max(indices) + 1 if indices else len(blocks)
    tokens = {
        key.removesuffix("key_tokens").removesuffix("."): value.shape[0]
        for key, value in state_dict.items()
        if key == "key_tokens" or key.endswith(".key_tokens")
    }
    shape = {"depth": depth, "tokens": tokens}
    bases = model_shape(model).get("base_tokens", {})
    if bases:
        built = {name: len(blocks) for name, blocks in block_containers(model)}
        sources = {name: _source_layer(name, depth, built) for name in tokens}
        shape["base_tokens"] = {n: bases[s] for n, s in sources.items() if s in bases}
    return shape


def _source_layer(name: str, depth: Mapping[str, int], built: Mapping[str, int]) -> str:
    """The layer of the model as built that layer ``name`` of a deeper checkpoint copies: block
    ``i`` of a list grown ``k`` times deeper comes from block ``i // k`` (as ``fit_to_shape``
    deepens)."""
    for container, saved in depth.items():
        prefix = f"{container}."
        factor = saved // built[container]
        if name.startswith(prefix) and factor > 1:
            index, rest = name[len(prefix) :].split(".", 1)
            return f"{prefix}{int(index) // factor}.{rest}"
    return name


def fit_to_shape(model: nn.Module, shape: Shape) -> None:
    """Resize ``model``, built at its initial size, to ``shape``: each block list first (a run
    that grew in depth holds a multiple of its initial blocks; the new blocks are placeholders
    for a checkpoint's values), then each Pattention layer's token count. A record that names
    what the model lacks is an error naming the fix."""
    containers = dict(block_containers(model))
    unknown = sorted(set(shape.get("depth", {})) - set(containers))
    if unknown:
        raise ValueError(
            f"the shape record has block lists {unknown} that {type(model).__name__} lacks; "
            "build the model the checkpoint was trained from"
        )
    deepened = []
    for name, saved in shape.get("depth", {}).items():
        built = len(containers[name])
        if saved == built:
            continue
        if saved < built or saved % built:
            raise ValueError(
                f"the checkpoint has {saved} blocks under {name!r}, the model {built}: a run that "
                "grew in depth saves a multiple of its initial depth; create the model with "
                f"depth={saved} (and grow it afterwards if you want more) or load the matching "
                "checkpoint"
            )
        deepen(model, saved // built, "stack", None, container=name)
        deepened.append(f"{name} {built}->{saved}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Pattention)}
    unknown = sorted(set(shape.get("tokens", {})) - set(layers))
    if unknown:
        raise ValueError(
            f"the shape record has Pattention layers {unknown[:3]} ({len(unknown)} in all) that "
            f"{type(model).__name__} lacks; build the model the checkpoint was trained from"
        )
    check_base_tokens(layers, shape)
    resized = 0
    for name, count in shape.get("tokens", {}).items():
        if layers[name].num_tokens != count:
            resize_tokens(layers[name], count)
            resized += 1
    if resized:
        record_token_counts(model)
    if deepened or resized:
        logger.info(
            "fitted %s to the checkpoint's shape: %s%d Pattention layers resized",
            type(model).__name__, "".join(f"depth {d}, " for d in deepened), resized,
        )  # fmt: skip


def load_resized(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], shape: Shape | None = None
) -> nn.Module:
    """Load ``state_dict`` strictly into ``model`` built at its initial size, fitted first to
    ``shape`` (the checkpoint's record; None: read from its tensors). The one way a checkpoint
    becomes a model; returns ``model``."""
    fit_to_shape(model, shape if shape is not None else state_shape(model, state_dict))
    model.load_state_dict(state_dict)
    return model
