"""Growth: scale a Tokenformer by appending parameter tokens (docs/design.md, "Growth").

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

Everything here works on any module tree holding Pattention layers: either tower, a CLIP model,
a model wrapped in DDP.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .block import TokenformerBlock
from .initialization import seeded_rng
from .pattention import KINDS, Pattention

logger = logging.getLogger(__name__)

INITS = ("exact", "perturbed", "official")
DEFAULT_PERTURBATION = 1e-2  # of the key init std, for init="perturbed"
DEPTH_INITS = ("exact", "stack")


@dataclass(frozen=True)
class GrownLayer:
    """One Pattention layer that grew."""

    name: str
    kind: str
    old_tokens: int
    new_tokens: int
    added_params: int


@dataclass
class GrowthReport:
    """What ``grow_model`` / ``load_grown`` changed: the layers that grew, the parameter counts."""

    init: str
    params_before: int
    params_after: int
    layers: list[GrownLayer] = field(default_factory=list)
    depth: tuple[int, int] | None = None  # (before, after) for ``grow_depth``

    @property
    def added_params(self) -> int:
        return self.params_after - self.params_before

    def __str__(self) -> str:
        params = (
            f"{self.params_before:,} -> {self.params_after:,} parameters (+{self.added_params:,})"
        )
        grew = []
        if self.depth is not None:
            grew.append(f"depth {self.depth[0]} -> {self.depth[1]}")
        if self.layers:
            tokens = sorted({(g.kind, g.old_tokens, g.new_tokens) for g in self.layers})
            per_kind = ", ".join(f"{kind} {old}->{new}" for kind, old, new in tokens)
            grew.append(f"{len(self.layers)} Pattention layers ({per_kind})")
        return f"grew {' and '.join(grew) or 'nothing'} with init={self.init}: {params}"


def _check_init(init: str, perturbation: float = DEFAULT_PERTURBATION) -> None:
    if init not in INITS:
        raise ValueError(f"unknown growth init {init!r}; expected one of {INITS}")
    if init == "perturbed" and not perturbation > 0:
        raise ValueError(f"init='perturbed' needs a positive perturbation, got {perturbation!r}")


def _pattention_layers(model: nn.Module) -> list[tuple[str, Pattention]]:
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Pattention)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} contains no Pattention layers, so it has no parameter tokens "
            "to grow; grow a Tokenformer model"
        )
    return layers


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _fill_new_keys(layer: Pattention, start: int, init: str, perturbation: float) -> None:
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
        _fill_new_keys(layer, start, init, perturbation)


@torch.no_grad()
def _resize_tokens(layer: Pattention, num_tokens: int) -> None:
    """Give the layer new, resized token Parameters (the first rows copied).

    New ``nn.Parameter`` objects, not a ``.data`` swap: autograd caches one gradient accumulator
    per tensor, and a graph recorded before growth (a loss a training loop still holds) keeps the
    old one, shaped like the old tensor, alive; reusing the tensor would fail the next backward.
    Each old Parameter records its successor (``_grown_into``), which ``grow_optimizer_state``
    follows to move an optimizer's references and state over.
    """
    for name in ("key_tokens", "value_tokens"):
        old = getattr(layer, name)
        grown = old.new_empty(num_tokens, old.shape[1])
        keep = min(num_tokens, old.shape[0])
        grown[:keep] = old[:keep]
        new = nn.Parameter(grown, requires_grad=old.requires_grad)
        setattr(layer, name, new)
        old._grown_into = new
        old.grad = None  # a gradient of the old shape is meaningless now


def _target_tokens(
    layer: Pattention, factor: float | None, num_tokens: int | Mapping[str, int] | None
) -> int:
    if factor is not None:
        return round(layer.num_tokens * factor)
    if isinstance(num_tokens, Mapping):
        return num_tokens.get(layer.kind, layer.num_tokens)
    return int(num_tokens)


def _check_growth_args(
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
    if factor is not None and (not isinstance(factor, (int, float)) or factor <= 0):
        raise ValueError(f"growth factor must be a positive number, got {factor!r}")
    if isinstance(num_tokens, Mapping):
        extra = [k for k in num_tokens if k not in kinds]
        if extra:
            raise ValueError(f"num_tokens names kinds {extra} that are not being grown {kinds}")
        counts = list(num_tokens.values())
    else:
        counts = [] if num_tokens is None else [num_tokens]
    for count in counts:
        if not isinstance(count, int) or count <= 0:
            raise ValueError(f"token counts must be positive ints, got {count!r}")
    return kinds


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
        model: any module tree containing Pattention layers.
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
    backpropagated afterwards). Pass the ``optimizer`` (or call ``grow_optimizer_state`` on it,
    or build a new one): an optimizer that is not told keeps the old Parameters, which no longer
    receive gradients. Hooks registered on the old Parameters do not carry over.
    """
    _check_init(init, perturbation)
    if seed is not None:
        with seeded_rng(seed):
            return grow_model(
                model, factor, num_tokens, kinds, init, optimizer, perturbation, depth, depth_init
            )
    if depth != 1:
        params_before = _count_params(model)
        deeper = grow_depth(model, depth, depth_init, optimizer)
        if factor is None and num_tokens is None:
            return deeper
        report = grow_model(model, factor, num_tokens, kinds, init, optimizer, perturbation)
        report.params_before, report.depth = params_before, deeper.depth
        return report
    kinds = _check_growth_args(factor, num_tokens, kinds)
    selected = [(name, m) for name, m in _pattention_layers(model) if m.kind in kinds]
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

    report = GrowthReport(init=init, params_before=_count_params(model), params_after=0)
    softmax_layers = []
    for name, layer in selected:
        old, new = layer.num_tokens, targets[name]
        if new == old:
            continue
        _resize_tokens(layer, new)
        _fill_new_rows(layer, old, init, perturbation)
        if layer.norm == "softmax":
            softmax_layers.append(name)
        added = (new - old) * (layer.in_features + layer.out_features)
        report.layers.append(GrownLayer(name, layer.kind, old, new, added))
    report.params_after = _count_params(model)
    if softmax_layers and init != "official":
        warnings.warn(
            f"{len(softmax_layers)} softmax Pattention layers (e.g. {softmax_layers[0]}) grew "
            "approximately: softmax gives zero-key tokens weight exp(0) > 0, so their output "
            "changes; use an l2_norm_gelu or gelu_l2_norm model for exact growth",
            stacklevel=2,
        )
    if optimizer is not None:
        grow_optimizer_state(optimizer)
    logger.info("%s", report)
    return report


def _current(param: nn.Parameter) -> nn.Parameter:
    """The Parameter that replaced ``param`` (grown maybe more than once), or ``param`` itself."""
    while hasattr(param, "_grown_into"):
        param = param._grown_into
    return param


@torch.no_grad()
def grow_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Move an optimizer over to the Parameters ``grow_model`` made, and grow their state.

    Its references to grown Parameters are replaced by the new ones (in ``param_groups`` and
    ``state``). Every state tensor shaped like the parameter's old shape (Adam/AdamW ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``) keeps its old rows and gets zero
    rows for the new tokens, so the old rows continue exactly as if nothing grew.

    New rows of an Adam-style state (``exp_avg_sq`` and ``betas``) would otherwise get a kick: they
    share the parameter's step count, whose bias correction is ~1 late in training, so zero
    moments make their first update ``(1 - β1) / sqrt(1 - β2)`` ≈ 3.2x a fresh AdamW's (β 0.9,
    0.999). Instead, at the next step their second moment is seeded from their own first
    gradient, so that the bias-corrected estimate equals that gradient squared, as a fresh
    AdamW's does; the first moment starts at zero and builds up, a short warm-up of the new rows
    that never exceeds a fresh AdamW's first update (``docs/design.md``, "Growth"). Returns the
    number of state tensors grown.
    """
    grown = 0
    seed_from_row: dict[nn.Parameter, int] = {}
    for group in optimizer.param_groups:
        for i, old in enumerate(group["params"]):
            param = _current(old)
            if param is not old:
                group["params"][i] = param
                if old in optimizer.state:
                    optimizer.state[param] = optimizer.state.pop(old)
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if not torch.is_tensor(value) or value.shape == param.shape or value.dim() == 0:
                    continue
                if (
                    value.dim() != param.dim()
                    or value.shape[1:] != param.shape[1:]
                    or (value.shape[0] > param.shape[0])
                ):
                    raise ValueError(
                        f"optimizer state {key!r} of shape {tuple(value.shape)} cannot grow to the "
                        f"parameter shape {tuple(param.shape)}"
                    )
                padded = value.new_zeros(param.shape)
                padded[: value.shape[0]] = value
                state[key] = padded
                grown += 1
                if key == "exp_avg_sq" and "betas" in group:
                    seed_from_row[param] = value.shape[0]
    if seed_from_row:
        seed_new_rows_at_next_step(optimizer, seed_from_row)
    return grown


def pending_new_rows(optimizer: torch.optim.Optimizer) -> dict[nn.Parameter, int]:
    """The parameters whose new rows still wait for their second moment to be seeded (at the
    next step), with the first new row of each: what moves to a rebuilt optimizer."""
    return dict(getattr(optimizer, "_tokenformer_pending_rows", None) or {})


def seed_new_rows_at_next_step(
    optimizer: torch.optim.Optimizer, seed_from_row: dict[nn.Parameter, int]
) -> None:
    """Before the next step that gives each parameter a gradient, seed the second moment of its
    rows ``seed_from_row[param]:`` so that the step's bias-corrected estimate is ``grad**2``."""
    pending = dict(seed_from_row)
    if getattr(optimizer, "_tokenformer_pending_rows", None):  # grown again before a step
        for param, row in optimizer._tokenformer_pending_rows.items():
            param = _current(param)
            pending[param] = min(row, pending.get(param, row))
        optimizer._tokenformer_seed_hook.remove()
    betas = {param: group["betas"] for group in optimizer.param_groups for param in group["params"]}

    @torch.no_grad()
    def seed(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for param, row in list(pending.items()):
            if param.grad is None:
                continue
            beta2 = float(betas[param][1])
            step = float(opt.state[param]["step"]) + 1  # the step about to be taken
            # Adam then sets v = β2 v + (1 - β2) g², and divides by 1 - β2^step.
            weight = max(0.0, (1 - beta2**step - (1 - beta2)) / beta2)
            second = _rows_from(opt.state[param]["exp_avg_sq"], row)
            second.copy_(weight * _rows_from(param.grad, row).to(second.dtype).square())
            del pending[param]
        if not pending:
            optimizer._tokenformer_seed_hook.remove()

    optimizer._tokenformer_pending_rows = pending
    optimizer._tokenformer_seed_hook = optimizer.register_step_pre_hook(seed)


def _rows_from(tensor: torch.Tensor, row: int) -> torch.Tensor:
    """The rows ``row:`` (global index) of ``tensor`` this process holds, as a writable view: all
    of them for a plain tensor, those of its shard for an FSDP2 DTensor (sharded by rows)."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # no DTensor exists before its import
    if dtensor is None or not isinstance(tensor, dtensor.DTensor):
        return tensor[row:]
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if tuple(tensor.placements) != (Shard(0),):
        raise ValueError(f"expected a tensor sharded by rows (Shard(0)), got {tensor.placements}")
    _, offset = compute_local_shape_and_global_offset(
        tensor.shape, tensor.device_mesh, tensor.placements
    )
    return tensor.to_local()[max(0, row - offset[0]) :]


def block_containers(model: nn.Module) -> list[tuple[str, nn.ModuleList | nn.Sequential]]:
    """Every ``ModuleList`` / ``Sequential`` of the model made of Tokenformer blocks."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential))
        and len(module) > 0
        and all(isinstance(child, TokenformerBlock) for child in module)
    ]


def _block_container(model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """The one ``ModuleList`` / ``Sequential`` of the model made of Tokenformer blocks."""
    found = block_containers(model)
    if len(found) != 1:
        names = [name for name, _ in found]
        raise ValueError(
            f"grow_depth needs exactly one list of TokenformerBlocks in {type(model).__name__}, "
            f"found {len(found)} ({names}); grow a tower (e.g. clip_model.text), not the model"
        )
    return found[0]


@torch.no_grad()
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
    if init not in DEPTH_INITS:
        raise ValueError(f"unknown depth-growth init {init!r}; expected one of {DEPTH_INITS}")
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"depth growth factor must be an int >= 2, got {factor!r}")
    name, blocks = _block_container(model)
    depth = (len(blocks), len(blocks) * factor)
    report = GrowthReport(init, params_before=_count_params(model), params_after=0, depth=depth)
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
    if isinstance(blocks, nn.Sequential):
        new_container: nn.Module = nn.Sequential(*grown)
    else:
        new_container = nn.ModuleList(grown)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new_container)
    # Each group in the model's parameter order, as a fresh optimizer over the grown model would
    # have it: an optimizer state_dict saved now then loads into that optimizer on resume.
    order = {id(param): index for index, param in enumerate(model.parameters())}
    for group in groups:
        group["params"].sort(key=lambda param: order.get(id(param), len(order)))
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and any(
        f.name == "depth" for f in dataclasses.fields(config)
    ):
        model.config = dataclasses.replace(config, depth=depth[1])
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and "module" in feature_info[0]:
        info = feature_info[0]
        model.feature_info = [{**info, "module": f"{name}.{i}"} for i in range(depth[1])]
    report.params_after = _count_params(model)
    logger.info("%s", report)
    return report


def deepened_state_dict(
    deep: nn.Module, state_dict: Mapping[str, torch.Tensor], factor: int, init: str
) -> dict[str, torch.Tensor]:
    """``state_dict`` of a shallower model laid out as ``grow_depth(factor, init)`` would grow it.

    Old block ``i`` becomes block ``i * factor``; with ``init="stack"`` its copies follow it, with
    ``"exact"`` the new blocks take ``deep``'s own (the identities ``grow_depth`` made). For
    growing a companion of a live model, e.g. its EMA, after the model grew in depth.
    """
    if init not in DEPTH_INITS:
        raise ValueError(f"unknown depth-growth init {init!r}; expected one of {DEPTH_INITS}")
    prefix = _block_container(deep)[0] + "."
    out = {k: v for k, v in deep.state_dict().items() if k.startswith(prefix)}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        copies = range(factor) if init == "stack" else range(1)
        for j in copies:
            out[f"{prefix}{int(index) * factor + j}.{rest}"] = value
    return out


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
    _check_init(init, perturbation)
    layers = {f"{name}." if name else "": m for name, m in _pattention_layers(model)}
    token_keys = {prefix + t for prefix in layers for t in ("key_tokens", "value_tokens", "tau")}
    target = model.state_dict()
    problems = [f"missing from checkpoint: {k}" for k in target if k not in state_dict]
    problems += [f"unexpected in checkpoint: {k}" for k in state_dict if k not in target]
    for key, src in state_dict.items():
        dst = target.get(key)
        if dst is None or src.shape == dst.shape:
            continue
        if (
            key in token_keys
            and src.dim() == 2
            and src.shape[1] == dst.shape[1]
            and (src.shape[0] < dst.shape[0])
        ):
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
    report = GrowthReport(init=init, params_before=0, params_after=_count_params(model))
    for prefix, layer in layers.items():
        old = state_dict[prefix + "key_tokens"].shape[0]
        layer.key_tokens[:old].copy_(state_dict[prefix + "key_tokens"])
        layer.value_tokens[:old].copy_(state_dict[prefix + "value_tokens"])
        if old == layer.num_tokens or init != "official":
            _fill_new_keys(layer, old, init, perturbation)
            layer.set_tau(float(state_dict[prefix + "tau"]))
        else:  # official: the model's own random rows, τ of the larger size
            layer.set_tau(math.sqrt(layer.num_tokens))
        if old < layer.num_tokens:
            added = (layer.num_tokens - old) * (layer.in_features + layer.out_features)
            report.layers.append(
                GrownLayer(prefix.rstrip("."), layer.kind, old, layer.num_tokens, added)
            )
    report.params_before = report.params_after - sum(layer.added_params for layer in report.layers)
    logger.info("%s", report)
    return report


def load_resized(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` strictly into ``model`` built at its initial size (a run that grew)."""
    match_depth(model, state_dict)
    match_token_counts(model, state_dict)
    model.load_state_dict(state_dict)


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
            "that grew in depth saves a multiple of its initial depth; build the model with the "
            "checkpoint's depth or load the matching checkpoint"
        )
    grow_depth(model, saved // len(blocks), init="stack")
    return saved // len(blocks)


def match_token_counts(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Resize every Pattention of ``model`` to the token counts in ``state_dict``.

    For loading a checkpoint of a run that grew into a model built at the run's initial size:
    call this, then ``model.load_state_dict(state_dict)``. Returns the number of layers resized.
    """
    resized = 0
    for name, layer in _pattention_layers(model):
        key = f"{name}.key_tokens" if name else "key_tokens"
        if key in state_dict and state_dict[key].shape[0] != layer.num_tokens:
            _resize_tokens(layer, state_dict[key].shape[0])
            resized += 1
    return resized
