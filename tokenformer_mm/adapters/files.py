"""An adapter alone in a file: safetensors with the shape of everything it was made for.

``save_adapter`` writes adapter ``name``'s tensors (``manage.adapter_state_dict``) and, as
metadata, each adapted layer's shape and each saved module's tensor shapes; ``load_adapter``
refuses a model whose layers or modules differ, naming both shapes. Names are matched exactly,
or by the one name of ours that ends with the saved one or that it ends with (a tower saved
alone and loaded inside a wrapper such as transformers' ``model.``, or back).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..pattention import Pattention
from .layer import AdapterConfig, TokenAdapter
from .manage import (
    SAVED,
    adapter_state_dict,
    check_name,
    holders,
    plain_modules,
    train_only,
    wrapped,
)
from .saved import SavedModule

FORMAT = "tokenformer-mm token adapter"


def _layer_shape(layer: Pattention) -> dict[str, object]:
    return {"in_features": layer.in_features, "out_features": layer.out_features,
            "num_tokens": layer.num_tokens, "kind": layer.kind, "norm": layer.norm,
            "base_tokens": layer.base_tokens}  # fmt: skip


def _module_shape(module: nn.Module) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def save_adapter(model: nn.Module, name: str, path: str | Path, overwrite: bool = False) -> Path:
    """Adapter ``name`` alone as safetensors, with the shape of each layer and module it holds;
    refuses to replace a file unless ``overwrite``, and never leaves a partial one."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory; save_adapter writes one file (adapter.safetensors)"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists; pass overwrite=True to replace it, or choose another"
        )
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    found = [(n, holder) for n, holder in holders(model) if name in holder.adapters]
    layers = {n: _layer_shape(h.base) for n, h in found if isinstance(h, TokenAdapter)}
    modules = {n: _module_shape(h.original) for n, h in found if isinstance(h, SavedModule)}
    metadata = {"format": FORMAT, "layers": json.dumps(layers), "modules": json.dumps(modules)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        save_file(state, partial, metadata=metadata)
        os.replace(partial, path)  # the whole file or none
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


def load_adapter(model: nn.Module, path: str | Path, name: str) -> list[str]:
    """Adapter ``name`` from a ``save_adapter`` file: checked against the model's layers and
    modules (their shapes as saved), added frozen-base and made active; returns their names."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no token adapter file at {path} (save one with save_adapter)")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT or "layers" not in metadata:
            raise ValueError(f"{path} is not a token adapter file (no {FORMAT!r} metadata)")
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open's API)
    ours = dict(plain_modules(model))
    patterns = {n: m for n, m in ours.items() if isinstance(m, Pattention)}
    layers = _match(path, json.loads(metadata["layers"]), patterns, _layer_shape, "layer")
    modules = _match(path, json.loads(metadata.get("modules", "{}")), ours, _module_shape, "module")
    check_name(model, name)
    tokens = {n: _saved_tokens(path, state, s, patterns[n]) for n, s in layers.items()}
    copies = {n: _saved_module(path, state, s, ours[n]) for n, s in modules.items()}
    with torch.no_grad():  # everything checked: the model changes only now
        for layer_name, saved in tokens.items():
            config = AdapterConfig(num_tokens=saved[0].shape[0])
            wrapped(model, layer_name, TokenAdapter).add(name, config, saved)
        for module_name, tensors in copies.items():
            wrapped(model, module_name, SavedModule).add(name).load_state_dict(tensors)
    train_only(model, name)
    return [*layers, *modules]


def _saved_tokens(path, state: dict, saved: str, layer: Pattention) -> tuple[torch.Tensor, ...]:
    """A saved layer's ``(keys, values)``, checked to be ``[m, in]`` and ``[m, out]``."""
    keys, values = state.get(f"{saved}.keys"), state.get(f"{saved}.values")
    if keys is None or values is None:
        raise ValueError(f"{path} records layer {saved!r} but lacks its keys or values tensor")
    m = keys.shape[0]
    if m == 0 or keys.shape != (m, layer.in_features) or values.shape != (m, layer.out_features):
        raise ValueError(
            f"{path} holds keys {tuple(keys.shape)} and values {tuple(values.shape)} for "
            f"{saved!r}; its layer needs [m, {layer.in_features}] and [m, {layer.out_features}]"
        )
    return keys, values


def _saved_module(path, state: dict, saved: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A saved module copy's tensors, checked to be exactly the module's."""
    prefix = f"{saved}.{SAVED}."
    tensors = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if {k: tuple(v.shape) for k, v in tensors.items()} != want:
        raise ValueError(
            f"{path} holds tensors {sorted(tensors)} for module {saved!r}; it needs {want}"
        )
    return tensors


def _match(path, saved: dict, ours: dict[str, nn.Module], shape_of, what: str) -> dict[str, str]:
    """Our name for each saved layer or module (checked to have its saved shape) -> its saved
    name."""
    matched = {}
    for saved_name, shape in saved.items():
        found = _resolve(saved_name, ours)
        if len(found) != 1:
            raise ValueError(
                f"{path} adapts {what} {saved_name!r}, which this model "
                + (
                    f"has several of ({found})"
                    if found
                    else "does not have (nor one whose name ends with it)"
                )
                + ": load it into the model it was trained on"
            )
        our_name = found[0]
        if our_name in matched:
            raise ValueError(
                f"{path} adapts {what}s {matched[our_name]!r} and {saved_name!r}, which are both "
                f"this model's {our_name!r}: load it into the model it was trained on"
            )
        if shape_of(ours[our_name]) != shape:
            raise ValueError(
                f"{path} was made for {saved_name} with {shape}; this model's {what} has "
                f"{shape_of(ours[our_name])}: load it into the model it was trained on"
            )
        matched[our_name] = saved_name
    return matched


def _resolve(saved: str, ours: dict[str, nn.Module]) -> list[str]:
    """The modules of ours a saved name may mean: the same name, else those whose names end
    with it or that it ends with (a tower saved alone, loaded inside a wrapper, or back)."""
    if saved in ours:
        return [saved]
    return [n for n in ours if n.endswith("." + saved) or saved.endswith("." + n)]
