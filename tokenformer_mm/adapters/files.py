"""An adapter alone in a file: safetensors with the shape of everything it was made for.

``save_adapter`` writes adapter ``name``'s tensors (``manage.adapter_state_dict``) and, as
metadata, each adapted layer's shape and each saved module's tensor shapes; ``load_adapter``
refuses a model whose layers or modules differ, naming both shapes. Names are matched exactly,
or by the one name of ours that ends with the saved one or that it ends with (a tower saved
alone and loaded inside a wrapper such as transformers' ``model.``, or back).
"""

from __future__ import annotations

import json
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


def save_adapter(model: nn.Module, name: str, path: str | Path) -> Path:
    """Adapter ``name`` alone as safetensors, with the shape of each layer and module it holds."""
    from safetensors.torch import save_file

    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    found = [(n, holder) for n, holder in holders(model) if name in holder.adapters]
    layers = {n: _layer_shape(h.base) for n, h in found if isinstance(h, TokenAdapter)}
    modules = {n: _module_shape(h.original) for n, h in found if isinstance(h, SavedModule)}
    metadata = {"format": FORMAT, "layers": json.dumps(layers), "modules": json.dumps(modules)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def load_adapter(model: nn.Module, path: str | Path, name: str) -> list[str]:
    """Adapter ``name`` from a ``save_adapter`` file: checked against the model's layers and
    modules (their shapes as saved), added frozen-base and made active; returns their names."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no token adapter file at {path} (save one with save_adapter)")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a token adapter file (no {FORMAT!r} metadata)")
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open's API)
    ours = dict(plain_modules(model))
    patterns = {n: m for n, m in ours.items() if isinstance(m, Pattention)}
    layers = _match(path, json.loads(metadata["layers"]), patterns, _layer_shape, "layer")
    modules = _match(path, json.loads(metadata.get("modules", "{}")), ours, _module_shape, "module")
    check_name(model, name)
    with torch.no_grad():
        for layer_name, saved_name in layers.items():
            layer = wrapped(model, layer_name, TokenAdapter)
            keys = state[f"{saved_name}.keys"]
            layer.add(name, AdapterConfig(num_tokens=keys.shape[0]))
            layer.adapter_keys[name].copy_(keys)
            layer.adapter_values[name].copy_(state[f"{saved_name}.values"])
        for module_name, saved_name in modules.items():
            prefix = f"{saved_name}.{SAVED}."
            tensors = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            wrapped(model, module_name, SavedModule).add(name).load_state_dict(tensors)
    train_only(model, name)
    return [*layers, *modules]


def _match(path, saved: dict, ours: dict[str, nn.Module], shape_of, what: str) -> dict[str, str]:
    """Our name for each saved layer or module (checked to have its saved shape) -> its saved
    name."""
    matched = {}
    for saved_name, shape in saved.items():
        our_name = _resolve(saved_name, ours)
        if our_name is None:
            raise ValueError(
                f"{path} adapts {what} {saved_name!r}, which this model does not have (nor one "
                "whose name ends with it): load it into the model it was trained on"
            )
        if shape_of(ours[our_name]) != shape:
            raise ValueError(
                f"{path} was made for {saved_name} with {shape}; this model's {what} has "
                f"{shape_of(ours[our_name])}: load it into the model it was trained on"
            )
        matched[our_name] = saved_name
    return matched


def _resolve(saved: str, ours: dict[str, nn.Module]) -> str | None:
    """The module of ours a saved name means: the same name, or the one name that ends with it
    or that it ends with (a tower saved alone, loaded inside a wrapper, or back)."""
    if saved in ours:
        return saved
    found = [n for n in ours if n.endswith("." + saved) or saved.endswith("." + n)]
    return found[0] if len(found) == 1 else None
