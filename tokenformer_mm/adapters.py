"""Token adapters: new knowledge as appended key-value tokens, the trained model frozen.

A trained model adapts by appending ``m`` tokens to chosen layers and training only those
(docs/design.md, "Token adapters"). ``add_adapter`` wraps each chosen layer in a ``TokenAdapter``
holding the layer (frozen) and named adapters; the active one computes what its tokens would if
appended to the layer's own: one normalisation over all ``n + m`` scores, τ the layer's:

    s, s_a = x @ K.T, x @ K_a.T;  r = hypot(|s|, |s_a|)     (l2_norm_gelu)
    y = gelu(s · τ / r) @ V + gelu(s_a · τ / r) @ V_a

With zero keys (``init="exact"``) ``s_a = 0``, ``gelu(0) = 0`` and ``hypot(r, 0) = r``: the model
computes bit for bit what it did, and the keys still get a gradient (``gelu'(0) = 1/2``). So
``merge_adapter`` (append the tokens to the layer for good, as exact growth does) and
``remove_adapter`` (drop them, the layer untouched) are exact, and ``save_adapter`` /
``load_adapter`` move only the adapter: a small safetensors file with the shape of every layer it
was made for, which a model of another shape refuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .growth.depth import block_containers
from .growth.tokens import carried_value_factor, record_token_counts, resize_tokens
from .pattention import KINDS, Pattention
from .theta import row_norm, row_scale

FORMAT = "tokenformer-mm token adapter"
EXACT_NORMS = ("l2_norm_gelu", "gelu_l2_norm")  # a zero key gives a zero weight
ADAPTER_INITS = ("exact", "perturbed")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Where an adapter goes and how it starts.

    Args:
        num_tokens: tokens appended to each chosen layer.
        kinds: which Pattention layers of a block (``qkv``, ``proj``, ``ffn``).
        blocks: indices of the blocks in each block list; None: every block.
        init: ``exact`` (zero keys: the model unchanged) or ``perturbed`` (keys at
            ``perturbation`` times the layer's key init std: the new tokens start apart).
    """

    num_tokens: int
    kinds: tuple[str, ...] = KINDS
    blocks: tuple[int, ...] | None = None
    init: str = "exact"
    perturbation: float = 1e-2

    def __post_init__(self) -> None:
        if not isinstance(self.num_tokens, int) or self.num_tokens <= 0:
            raise ValueError(f"adapter num_tokens must be a positive int, got {self.num_tokens!r}")
        if not self.kinds or any(kind not in KINDS for kind in self.kinds):
            raise ValueError(
                f"adapter kinds must be a non-empty subset of {KINDS}, got {self.kinds}"
            )
        if self.init not in ADAPTER_INITS:
            raise ValueError(f"adapter init must be one of {ADAPTER_INITS}, got {self.init!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))


class TokenAdapter(nn.Module):
    """A Pattention (``base``, frozen) with named adapters: extra key and value tokens, one of
    them active in the forward (``active``; None: the base layer alone)."""

    def __init__(self, base: Pattention) -> None:
        super().__init__()
        if base.norm not in EXACT_NORMS:
            raise ValueError(
                f"token adapters need a norm where a zero key gives a zero weight {EXACT_NORMS}; "
                f"this layer uses {base.norm!r}, where appended tokens change every weight"
            )
        self.base = base
        self.adapter_keys = nn.ParameterDict()
        self.adapter_values = nn.ParameterDict()
        self.active: str | None = None

    @torch.no_grad()
    def add(self, name: str, config: AdapterConfig) -> None:
        """A new adapter of ``config.num_tokens`` tokens: keys as ``config.init``, values drawn as
        the layer's value init (growth's rows)."""
        base = self.base
        keys = base.key_tokens.new_zeros(config.num_tokens, base.in_features)
        if config.init == "perturbed":
            keys.normal_(std=config.perturbation * base.key_init_std)
        values = base.value_tokens.new_empty(config.num_tokens, base.out_features)
        values.normal_(std=base.value_init_std)
        self.adapter_keys[name] = nn.Parameter(keys)
        self.adapter_values[name] = nn.Parameter(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, name = self.base, self.active
        if name is None:
            return base(x)
        scores = F.linear(x, base.key_tokens)
        extra = F.linear(x, self.adapter_keys[name])
        if base.norm == "gelu_l2_norm":  # GELU, then the norm of the activations
            scores, extra = F.gelu(scores), F.gelu(extra)
        norm = torch.hypot(row_norm(scores), row_norm(extra))  # over all n + m: exact at 0
        scale = row_scale(norm, base.tau, base.eps, x.dtype)
        weights, extra_weights = scores * scale, extra * scale
        if base.norm == "l2_norm_gelu":  # the norm of the scores, then GELU
            weights, extra_weights = F.gelu(weights), F.gelu(extra_weights)
        values = self.adapter_values[name] * base.value_multiplier  # μP: the layer's multiplier
        return base.dropout(weights) @ base.values() + base.dropout(extra_weights) @ values


def _adapted_layers(model: nn.Module) -> Iterator[tuple[str, TokenAdapter]]:
    for name, module in model.named_modules():
        if isinstance(module, TokenAdapter):
            yield name, module


def _chosen_layers(model: nn.Module, config: AdapterConfig) -> list[tuple[str, Pattention]]:
    """The Pattention layers of ``config.kinds`` in ``config.blocks`` (wrapped or not)."""
    prefixes = [name for name, _ in block_containers(model)]
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, Pattention) or module.kind not in config.kinds:
            continue
        name = name.removesuffix(".base")
        if config.blocks is not None:
            prefix = next((p for p in prefixes if name.startswith(p + ".")), None)
            if prefix is None or int(name[len(prefix) + 1 :].split(".")[0]) not in config.blocks:
                continue
        chosen.append((name, module))
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no Pattention layers of kinds {config.kinds} in blocks "
            f"{config.blocks}; choose kinds from {KINDS} and block indices the model has"
        )
    return chosen


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
    return module


def _wrapped(model: nn.Module, name: str) -> TokenAdapter:
    """The ``TokenAdapter`` at layer ``name``, wrapping the plain layer there first if need be."""
    module = model.get_submodule(name)
    if not isinstance(module, TokenAdapter):
        module = _replace(model, name, TokenAdapter(module))
    return module


def add_adapter(model: nn.Module, name: str, config: AdapterConfig) -> list[str]:
    """Append ``config.num_tokens`` trainable tokens to the chosen layers as adapter ``name``,
    freeze everything else and make the adapter active; returns the layers' names."""
    check_name(model, name)
    layers = [layer_name for layer_name, _ in _chosen_layers(model, config)]
    for layer_name in layers:
        _wrapped(model, layer_name).add(name, config)
    train_only(model, name)
    return layers


def check_name(model: nn.Module, name: str) -> None:
    """A new adapter's name: a module name (no dots), not one the model has."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"an adapter's name must be a non-empty string without dots, got {name!r}")
    if any(name in layer.adapter_keys for _, layer in _adapted_layers(model)):
        raise ValueError(f"the model already has an adapter named {name!r}; remove it first")


def train_only(model: nn.Module, name: str) -> None:
    """Adapter ``name`` trainable and active, every other parameter of the model frozen."""
    for param_name, param in model.named_parameters():
        param.requires_grad_(".adapter_" in param_name and param_name.endswith("." + name))
    set_adapter(model, name)


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` the one every adapted layer uses (None: the base model alone)."""
    layers = list(_adapted_layers(model))
    if name is not None and not any(name in layer.adapter_keys for _, layer in layers):
        known = sorted({n for _, layer in layers for n in layer.adapter_keys})
        raise ValueError(f"no adapter named {name!r}; the model has {known}")
    for _, layer in layers:
        layer.active = name if name in layer.adapter_keys else None


@contextlib.contextmanager
def using_adapter(model: nn.Module, name: str | None) -> Iterator[nn.Module]:
    """``with using_adapter(model, "code"):`` adapter ``name`` for the calls inside, then the
    adapters active before: one base, several adapters, switched per call."""
    before = {layer: layer.active for _, layer in _adapted_layers(model)}
    set_adapter(model, name)
    try:
        yield model
    finally:
        for layer, active in before.items():
            layer.active = active


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors by layer: ``<layer>.keys`` and ``<layer>.values``."""
    state = {}
    for layer_name, layer in _adapted_layers(model):
        if name in layer.adapter_keys:
            state[f"{layer_name}.keys"] = layer.adapter_keys[name].detach()
            state[f"{layer_name}.values"] = layer.adapter_values[name].detach()
    if not state:
        set_adapter(model, name)  # raises, naming the adapters there are
    return state


def _layer_shape(layer: Pattention) -> dict[str, object]:
    return {"in_features": layer.in_features, "out_features": layer.out_features,
            "num_tokens": layer.num_tokens, "kind": layer.kind, "norm": layer.norm,
            "base_tokens": layer.base_tokens}  # fmt: skip


def save_adapter(model: nn.Module, name: str, path: str | Path) -> Path:
    """Adapter ``name`` alone as safetensors, with the shape of each layer it adapts."""
    from safetensors.torch import save_file

    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    layers = {n: _layer_shape(layer.base) for n, layer in _adapted_layers(model)
              if name in layer.adapter_keys}  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": FORMAT, "layers": json.dumps(layers)})
    return path


def load_adapter(model: nn.Module, path: str | Path, name: str) -> list[str]:
    """Adapter ``name`` from a ``save_adapter`` file: checked against the model's layers (each
    one's shape as it was saved), added frozen-base and made active; returns the layers."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no token adapter file at {path} (save one with save_adapter)")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a token adapter file (no {FORMAT!r} metadata)")
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open's API)
    saved = json.loads(metadata["layers"])
    ours = {
        n.removesuffix(".base"): m for n, m in model.named_modules() if isinstance(m, Pattention)
    }
    layers = {}  # this model's layer name -> the name the file gives it
    for saved_name, shape in saved.items():
        layer_name = _resolve(saved_name, ours)
        if layer_name is None:
            raise ValueError(
                f"{path} adapts layer {saved_name!r}, which this model does not have (nor one "
                "whose name ends with it): load it into the model it was trained on"
            )
        if _layer_shape(ours[layer_name]) != shape:
            raise ValueError(
                f"{path} was made for {saved_name} with {shape}; this model's layer has "
                f"{_layer_shape(ours[layer_name])}: load it into the model it was trained on"
            )
        layers[layer_name] = saved_name
    check_name(model, name)
    for layer_name, saved_name in layers.items():
        module = _wrapped(model, layer_name)
        module.add(name, AdapterConfig(num_tokens=state[f"{saved_name}.keys"].shape[0]))
        with torch.no_grad():
            module.adapter_keys[name].copy_(state[f"{saved_name}.keys"])
            module.adapter_values[name].copy_(state[f"{saved_name}.values"])
    train_only(model, name)
    return list(layers)


def _resolve(saved: str, ours: dict[str, Pattention]) -> str | None:
    """The layer of ours a saved layer name means: the same name, or the one name that ends
    with it or that it ends with (a tower saved alone, loaded inside a wrapper, or back)."""
    if saved in ours:
        return saved
    found = [n for n in ours if n.endswith("." + saved) or saved.endswith("." + n)]
    return found[0] if len(found) == 1 else None


def remove_adapter(model: nn.Module, name: str) -> None:
    """Drop adapter ``name``; a layer left without adapters is the plain layer again."""
    adapter_state_dict(model, name)  # raises for an unknown name
    for layer_name, layer in list(_adapted_layers(model)):
        if name in layer.adapter_keys:
            del layer.adapter_keys[name], layer.adapter_values[name]
            layer.active = None if layer.active == name else layer.active
        if not layer.adapter_keys:
            _replace(model, layer_name, layer.base)


@torch.no_grad()
def merge_adapter(model: nn.Module, name: str) -> None:
    """Append adapter ``name``'s tokens to its layers for good (as exact growth does: τ kept,
    μP's value rows rescaled to the new count) and drop it; the model's token records follow."""
    merged = adapter_state_dict(model, name)
    for layer_name, layer in list(_adapted_layers(model)):
        if name not in layer.adapter_keys:
            continue
        base, keys = layer.base, merged[f"{layer_name}.keys"]
        old = base.num_tokens
        resize_tokens(base, old + keys.shape[0])
        factor = carried_value_factor(base, old)
        base.key_tokens[old:] = keys
        base.value_tokens[old:] = merged[f"{layer_name}.values"]
        base.value_tokens.mul_(factor)
    remove_adapter(model, name)
    record_token_counts(model)
