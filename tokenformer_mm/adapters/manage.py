"""Adapters on a model: add, switch, read out, merge and remove (the package's model-level API).

An adapter ``name`` lives in every ``TokenAdapter`` (its tokens on a Pattention layer) and every
``SavedModule`` (its copy of a module trained beside the tokens) that holds it; together these
are the model's *holders*, each with its own ``active`` adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..growth.depth import block_containers
from ..growth.tokens import carried_value_factor, record_token_counts, resize_tokens
from ..pattention import KINDS, Pattention
from .layer import AdapterConfig, TokenAdapter
from .saved import SavedModule

Holder = TokenAdapter | SavedModule
SAVED = "saved"  # adapter_state_dict's keys of a saved module: <module>.saved.<tensor>


def holders(model: nn.Module) -> Iterator[tuple[str, Holder]]:
    for name, module in model.named_modules():
        if isinstance(module, (TokenAdapter, SavedModule)):
            yield name, module


def plain_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module by the name it has without adapters: a holder's contents (``.base``,
    ``.original``) under the holder's name; the holders and the adapters' copies left out."""
    for name, module in model.named_modules():
        if not isinstance(module, (TokenAdapter, SavedModule)) and ".copies." not in name:
            yield name.removesuffix(".base").removesuffix(".original"), module


def _chosen_layers(model: nn.Module, config: AdapterConfig) -> list[str]:
    """The Pattention layers of ``config.kinds`` in ``config.blocks`` (wrapped or not)."""
    containers = block_containers(model)
    prefixes = [name for name, _ in containers]
    depths = [len(blocks) for _, blocks in containers]
    missing = [b for b in config.blocks or () if b >= max(depths, default=0)]
    if missing:
        raise ValueError(
            f"adapter blocks {missing} are not in {type(model).__name__}, whose block lists have "
            f"{depths} blocks; choose indices below that"
        )
    chosen = []
    for name, module in plain_modules(model):
        if not isinstance(module, Pattention) or module.kind not in config.kinds:
            continue
        if config.blocks is not None:
            prefix = next((p for p in prefixes if name.startswith(p + ".")), None)
            if prefix is None or int(name[len(prefix) + 1 :].split(".")[0]) not in config.blocks:
                continue
        chosen.append(name)
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no Pattention layers of kinds {config.kinds} in blocks "
            f"{config.blocks}; choose kinds from {KINDS} and block indices the model has"
        )
    return chosen


def chosen_modules(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """The modules ``modules_to_save`` names (each name once or as the end of a dotted name)."""
    chosen = []
    for wanted in names:
        found = [n for n, _ in plain_modules(model) if n == wanted or n.endswith(f".{wanted}")]
        if not found:
            raise ValueError(
                f"modules_to_save names {wanted!r}, which {type(model).__name__} has no module "
                "called or ending with; name modules as model.named_modules() does"
            )
        for name in found:
            if any(isinstance(m, Pattention) for m in model.get_submodule(name).modules()):
                raise ValueError(
                    f"modules_to_save module {name!r} holds Pattention layers: adapt those with "
                    "tokens (kinds, blocks) and save only modules without parameter tokens"
                )
            if ".original." in name:
                raise ValueError(
                    f"modules_to_save module {name!r} is inside a module an adapter already "
                    f"saves whole ({name.split('.original.')[0]!r}); save that one instead"
                )
        chosen += [name for name in found if name not in chosen]
    nested = [(a, b) for a in chosen for b in chosen if b.startswith(a + ".")]
    if nested:
        raise ValueError(
            f"modules_to_save module {nested[0][1]!r} is inside {nested[0][0]!r}, which is saved "
            "whole: name only the outer one"
        )
    return chosen


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
    return module


def wrapped(model: nn.Module, name: str, kind: type[Holder]) -> Holder:
    """The holder of type ``kind`` at ``name``, wrapping the plain module there first if need be."""
    module = model.get_submodule(name)
    if not isinstance(module, kind):
        module = _replace(model, name, kind(module))
    return module


def add_adapter(model: nn.Module, name: str, config: AdapterConfig) -> list[str]:
    """Append ``config.num_tokens`` trainable tokens to the chosen layers as adapter ``name``
    (and a trainable copy of each of ``config.modules_to_save``), freeze everything else and make
    the adapter active; returns the layers' and modules' names."""
    check_name(model, name)
    layers = _chosen_layers(model, config)
    modules = chosen_modules(model, config.modules_to_save)
    for layer_name in layers:
        wrapped(model, layer_name, TokenAdapter).add(name, config)
    for module_name in modules:
        wrapped(model, module_name, SavedModule).add(name)
    train_only(model, name)
    return layers + modules


def check_name(model: nn.Module, name: str) -> None:
    """A new adapter's name: a module name (no dots) that is no attribute of the dicts holding
    adapters (``values``, ``training``, ...), not one the model has."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"an adapter's name must be a non-empty string without dots, got {name!r}")
    if hasattr(nn.ParameterDict(), name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(
            f"an adapter can't be named {name!r}: it is an attribute of the dicts that hold "
            "adapters; choose another name"
        )
    if any(name in holder.adapters for _, holder in holders(model)):
        raise ValueError(f"the model already has an adapter named {name!r}; remove it first")


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters ``model`` carries, sorted."""
    return sorted({name for _, holder in holders(model) for name in holder.adapters})


def require_adapter(model: nn.Module, name: object) -> None:
    """Refuse a ``name`` that is no adapter of ``model``, naming the ones it has."""
    known = adapter_names(model)
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"no adapter named {name!r}; the model has {known}")


def train_only(model: nn.Module, name: str) -> None:
    """Adapter ``name`` trainable and active, every other parameter of the model frozen."""
    for param_name, param in model.named_parameters():
        tokens = ".adapter_" in param_name and param_name.endswith("." + name)
        param.requires_grad_(tokens or f".copies.{name}." in param_name)
    set_adapter(model, name)


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` the one every holder uses (None: the base model alone)."""
    if name is not None:
        require_adapter(model, name)
    for _, holder in holders(model):
        holder.active = name if name in holder.adapters else None


@contextlib.contextmanager
def using_adapter(model: nn.Module, name: str | None) -> Iterator[nn.Module]:
    """``with using_adapter(model, "code"):`` adapter ``name`` for the calls inside, then the
    adapters active before: one base, several adapters, switched per call."""
    before = {holder: holder.active for _, holder in holders(model)}
    set_adapter(model, name)
    try:
        yield model
    finally:
        for holder, active in before.items():  # one removed inside the block stays removed
            holder.active = active if active in holder.adapters else None


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors: ``<layer>.keys`` and ``<layer>.values`` of its tokens,
    ``<module>.saved.<tensor>`` of its module copies."""
    require_adapter(model, name)
    state = {}
    for holder_name, holder in holders(model):
        if name not in holder.adapters:
            continue
        if isinstance(holder, TokenAdapter):
            state[f"{holder_name}.keys"] = holder.adapter_keys[name].detach()
            state[f"{holder_name}.values"] = holder.adapter_values[name].detach()
        else:
            for key, tensor in holder.copies[name].state_dict().items():
                state[f"{holder_name}.{SAVED}.{key}"] = tensor.detach()
    return state


def remove_adapter(model: nn.Module, name: str) -> None:
    """Drop adapter ``name``; a holder left without adapters is the plain module again. The
    model's parameters stay frozen as ``add_adapter`` left them (as peft's unload does):
    ``model.requires_grad_(True)`` to train it whole."""
    require_adapter(model, name)
    for holder_name, holder in list(holders(model)):
        if name in holder.adapters:
            if isinstance(holder, TokenAdapter):
                del holder.adapter_keys[name], holder.adapter_values[name]
            else:
                del holder.copies[name]
            holder.active = None if holder.active == name else holder.active
        if not holder.adapters:
            plain = holder.base if isinstance(holder, TokenAdapter) else holder.original
            _replace(model, holder_name, plain)


@torch.no_grad()
def merge_adapter(model: nn.Module, name: str) -> None:
    """Make adapter ``name`` part of the model for good and drop it: its tokens appended to their
    layers (as exact growth does: τ kept, μP's value rows rescaled to the new count), its module
    copies in place of the originals; the model's token records follow. Under μP the other
    adapters' values are rescaled with the layer's, so they keep their function."""
    merged = adapter_state_dict(model, name)
    for holder_name, holder in list(holders(model)):
        if name not in holder.adapters:
            continue
        if isinstance(holder, SavedModule):
            holder.original.load_state_dict(holder.copies[name].state_dict())
            continue
        base, keys = holder.base, merged[f"{holder_name}.keys"]
        old = base.num_tokens
        resize_tokens(base, old + keys.shape[0])
        factor = carried_value_factor(base, old)
        base.key_tokens[old:] = keys
        base.value_tokens[old:] = merged[f"{holder_name}.values"]
        base.value_tokens.mul_(factor)
        for other, values in holder.adapter_values.items():  # μP: the multiplier they share moved
            if other != name:
                values.mul_(factor)
    remove_adapter(model, name)
    record_token_counts(model)
