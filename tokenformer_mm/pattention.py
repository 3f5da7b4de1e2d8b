"""Pattention: a linear projection replaced by attention over learnable parameter tokens.

Input tokens ``x[..., d_in]`` attend to ``n`` parameter tokens with keys ``K[n, d_in]`` and values
``V[n, d_out]`` (docs/design.md, "Pattention")::

    s = x @ K.T            # (..., n)  no 1/sqrt(d) scale: the official scale is 1
    y = theta(s) @ V       # (..., d_out)

``theta`` is a modified softmax chosen by ``norm`` (``theta.py``). Its temperature τ is a buffer
pinned at construction to ``sqrt(n)``: growing the layer later keeps τ, which is what makes
growth exact.

Two code paths compute the same function from the same ``theta.theta``: the *fused* one
(``fused_pattention.py``: saves one ``[tokens, n]`` tensor for backward instead of several) is
used where it applies and pays off, the *plain* one (autograd over it) is the reference and
serves TorchScript, traced and exported graphs (ONNX), ``torch.func``, active dropout and tiny
inputs. ``Pattention(fused=False)`` forces the plain path for one layer,
``set_fused_pattention(False)`` for every layer (the one global switch; no environment variable).

``base_tokens`` chooses the parametrization of the values (``parametrization.py``): None, the
paper's ``theta(s) @ V``; an int ``b``, μP over the token count, ``theta(s) @ (b / n · V)``, a
multiplier inside the layer that every Adam-like optimizer inherits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fused_pattention import fused_pattention
from .parametrization import key_init_std, value_init_std, value_multiplier, wang_init_std
from .theta import NORMS, theta, value_scale

KINDS = ("qkv", "proj", "ffn")
_fused_enabled = True
# Below this many score elements ([tokens, n]) a single layer's plain path is faster: the fused
# function's fixed Python cost (~0.1 ms on CPU) outweighs its fewer passes (measured on 2 cores;
# e.g. one token per step in generation). Groups (q/k/v) are faster fused at every size measured.
FUSED_MIN_SCORES = 1 << 15


def set_fused_pattention(enable: bool) -> None:
    """Switch every Pattention between the fused path (default) and the plain reference path."""
    global _fused_enabled
    _fused_enabled = bool(enable)


def fused_pattention_enabled() -> bool:
    return _fused_enabled


def _exporting() -> bool:
    """``torch.export`` runs (not ``torch.compile``, which torch 2.7-2.11 report as exporting)."""
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.6
    return exporting is not None and exporting() and not torch.compiler.is_dynamo_compiling()


def _check_in_features(x: torch.Tensor, in_features: int) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(
            f"Pattention expects inputs with last dim in_features={in_features}, "
            f"got shape {list(x.shape)}"
        )


# Leaves for torch.fx (wrapped where they are called): the shape check stays a call in traced
# graphs instead of breaking tracing, and the fused autograd function stays one node.
torch.fx.wrap("_check_in_features")
torch.fx.wrap("fused_pattention")


class Pattention(nn.Module):
    """Token-parameter attention, a drop-in replacement for ``nn.Linear(in, out, bias=False)``.

    Args:
        in_features: size of each input token (``d_in``).
        out_features: size of each output token (``d_out``).
        num_tokens: number of parameter tokens ``n``; τ is fixed to ``sqrt(num_tokens)``.
        norm: the modified softmax, one of ``NORMS``.
        dropout: dropout on ``theta(s)``, applied in training only.
        depth: number of blocks in the model, for the "wang init" of the values.
        kind: the role of this layer in a block (``qkv``, ``proj`` or ``ffn``); growth selects
            layers by it.
        eps: lower bound of the norms in ``theta``.
        key_init: how the key tokens start: ``"fan_in"`` N(0, 1/d_in), the default,
            ``"official"`` N(0, 0.02), the paper's, or a std. Values always start with the
            official "wang init".
        fused: None (default) takes the fused path where it applies and pays off (inputs of at
            least ``FUSED_MIN_SCORES`` score elements); True wherever it applies; False never.
        base_tokens: None (default) for the paper's parametrization; an int ``b`` for μP over the
            token count: the values are used as ``b / num_tokens · V``, so the learning rate
            tuned at ``b`` tokens holds at any count, growth included (fixed like τ).
    """

    __jit_unused_properties__ = ["num_tokens", "value_multiplier", "value_init_std"]  # noqa: RUF012  (TorchScript reads this list)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_tokens: int,
        norm: str = "l2_norm_gelu",
        dropout: float = 0.0,
        depth: int = 1,
        kind: str = "proj",
        eps: float = 1e-5,
        key_init: str | float = "fan_in",
        fused: bool | None = None,
        base_tokens: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("num_tokens", num_tokens),
            ("depth", depth),
            ("base_tokens", 1 if base_tokens is None else base_tokens),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Pattention {name} must be a positive int, got {value!r}")
        if norm not in NORMS:
            raise ValueError(f"unknown Pattention norm {norm!r}; expected one of {NORMS}")
        if kind not in KINDS:
            raise ValueError(f"unknown Pattention kind {kind!r}; expected one of {KINDS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Pattention dropout must be in [0, 1), got {dropout!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.norm = norm
        self.kind = kind
        self.eps = eps
        self.fused = fused
        self.base_tokens = base_tokens
        self.key_init_std = key_init_std(key_init, in_features)
        self.wang_init_std = wang_init_std(out_features, depth)
        self.key_tokens = nn.Parameter(torch.empty(num_tokens, in_features, **factory))
        self.value_tokens = nn.Parameter(torch.empty(num_tokens, out_features, **factory))
        # τ is state, not a hyper-parameter: it is saved with the weights and survives growth.
        # ``tau_value`` is τ kept in Python (sqrt(n) at construction, a loaded τ exactly, sqrt of
        # the new count after official growth), so that ``reset_parameters`` rebuilds τ after
        # meta-device construction + ``to_empty``.
        self.tau_value = math.sqrt(num_tokens)
        self.register_buffer("tau", torch.empty((), **factory))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        return self.key_tokens.shape[0]

    @property
    def value_multiplier(self) -> float:
        """The factor on ``value_tokens`` in the forward (``value_multiplier``)."""
        return value_multiplier(self.base_tokens, self.num_tokens)

    @property
    def value_init_std(self) -> float:
        """The std the value tokens start at, for the current count (growth draws new rows)."""
        return value_init_std(self.wang_init_std, self.base_tokens, self.num_tokens)

    def values(self) -> torch.Tensor:
        """The value tokens as the layer uses them: ``value_tokens`` times ``value_multiplier``
        (the tensor itself where that is 1, so the paper's parametrization runs as ever)."""
        base, count = self.base_tokens, self.key_tokens.shape[0]
        if base is None:  # alone: TorchScript compiles no further where base_tokens is None
            return self.value_tokens
        if base == count:
            return self.value_tokens
        return self.value_tokens * (base / count)

    def reset_parameters(self) -> None:
        """The layer's initial state: keys and values drawn, τ = ``tau_value``."""
        nn.init.normal_(self.key_tokens, std=self.key_init_std)
        nn.init.normal_(self.value_tokens, std=self.value_init_std)
        with torch.no_grad():
            self.tau.fill_(self.tau_value)

    @torch.no_grad()
    def set_tau(self, value: float) -> None:
        """Pin τ (the buffer and ``tau_value``, which ``reset_parameters`` rebuilds it from)."""
        self.tau_value = float(value)
        self.tau.fill_(self.tau_value)

    def _load_from_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        tau = state_dict.get(prefix + "tau")
        if tau is not None and not tau.is_meta:
            self.tau_value = float(tau)  # exactly what was saved, whatever its dtype

    @torch.jit.unused
    def uses_fused_path(self, x: torch.Tensor | None = None) -> bool:
        """Whether ``forward(x)`` takes the fused path now (``x=None``: any input size).

        Not while dropout is active (the fused backward recomputes ``theta`` and could not
        replay the mask; under fx tracing a graph keeps its path, so any dropout counts), nor
        under ``torch.func`` transforms (grad, vmap, jvp), which the plain path supports, nor
        in a graph being recorded: a TorchScript trace (``torch.onnx.export(dynamo=False)``)
        keeps the scores buffer, which matmuls fill with ``out=``, as a constant, so the layer
        ignored its input (issue 26); an exported program (``torch.export``, ONNX's dynamo) with
        those ``out=`` matmuls fails wherever a parameter requires grad. Nor (``fused=None``)
        for inputs too small to pay off.
        """
        tracing = torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        dropout_active = self.dropout.p > 0 and (self.training or tracing)
        if (
            self.fused is False
            or not _fused_enabled
            or dropout_active
            or torch._C._are_functorch_transforms_active()
            or torch.jit.is_tracing()
            or _exporting()
        ):
            return False
        if self.fused is None and x is not None and not tracing:
            return x.numel() // self.in_features * self.num_tokens >= FUSED_MIN_SCORES
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x, self.key_tokens, self.values())

    def attend(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The layer's function of ``x`` over ``keys`` and ``values`` (its own, or adapters')."""
        _check_in_features(x, self.in_features)
        # Nested: TorchScript skips the inner block entirely, the `and` form it would compile.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if self.uses_fused_path(x):
                return self._forward_fused(x, keys, values)
        scores = F.linear(x, keys)  # (..., n)
        weights = self.dropout(theta(scores, self.norm, self.tau, self.eps)[0])
        scale = value_scale(self.norm, self.tau)  # theta's linear factor, where it has one
        if scale is not None:
            values = values * scale.to(values.dtype)
        return weights @ values  # (..., d_out)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        return fused_pattention(x, [keys], [values], self.tau.view(1), self.norm, self.eps)[0]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_tokens={self.num_tokens}, norm={self.norm}, kind={self.kind}, "
            + ("" if self.base_tokens is None else f"base_tokens={self.base_tokens}, ")
            + f"tau={'meta' if self.tau.is_meta else format(self.tau.item(), '.4g')}"
        )


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_module_hooks() -> bool:
    """Hooks registered for every module (``nn.modules.module.register_module_*_hook``)."""
    from torch.nn.modules import module

    return bool(
        module._global_forward_hooks
        or module._global_forward_pre_hooks
        or module._global_backward_hooks
        or module._global_backward_pre_hooks
    )


def pattention_group(layers: Sequence[Pattention], x: torch.Tensor) -> list[torch.Tensor]:
    """``[layer(x) for layer in layers]``, as one fused call where that is the same thing.

    Layers that read one input (a block's q, k and v) share one fused call and save ``x`` once.
    The group runs layer by layer instead whenever calling each layer could differ: a layer
    that is not a plain ``Pattention`` (a subclass overriding ``forward``, a wrapper), is off
    the fused path, has hooks (its own or global ones) that must see its call, or differs in
    token count, norm or eps (after an uneven growth); and under torch.fx
    tracing (token counts are proxies then).
    """
    first = layers[0]
    if (
        len(layers) > 1
        and not torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        and not _global_module_hooks()
        and all(
            type(layer).forward is Pattention.forward
            and layer.uses_fused_path()
            and not _has_hooks(layer)
            and layer.num_tokens == first.num_tokens
            and layer.norm == first.norm
            and layer.eps == first.eps
            and layer.in_features == first.in_features
            for layer in layers
        )
    ):
        _check_in_features(x, first.in_features)
        return list(
            fused_pattention(
                x,
                [layer.key_tokens for layer in layers],
                [layer.values() for layer in layers],
                torch.stack([layer.tau for layer in layers]),
                first.norm,
                first.eps,
            )
        )
    return [layer(x) for layer in layers]
