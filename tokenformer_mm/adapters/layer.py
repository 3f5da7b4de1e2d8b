"""A token adapter on one layer: extra key-value tokens beside a frozen Pattention.

The active adapter computes what its tokens would if appended to the layer's own: one
normalisation over all ``n + m`` scores, τ the layer's::

    s, s_a = x @ K.T, x @ K_a.T;  r = hypot(|s|, |s_a|)     (l2_norm_gelu)
    y = gelu(s · τ / r) @ V + gelu(s_a · τ / r) @ V_a

With zero keys (``init="exact"``) ``s_a = 0``, ``gelu(0) = 0`` and the norm is the layer's own
``r`` (taken as is where ``s_a`` is zero, not through ``hypot``): the layer computes bit for bit
what it did, and the keys still get a gradient (``gelu'(0) = 1/2``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..pattention import KINDS, Pattention
from ..theta import row_norm, row_scale

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
        modules_to_save: modules trained beside the tokens, as peft's option of that name: a
            module whose name is one of these or ends with ``.`` + one (``head``, ``norm``)
            gets a trainable copy per adapter, saved in the adapter file; the original stays.
    """

    num_tokens: int
    kinds: tuple[str, ...] = KINDS
    blocks: tuple[int, ...] | None = None
    init: str = "exact"
    perturbation: float = 1e-2
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.num_tokens, int) or isinstance(self.num_tokens, bool):
            raise ValueError(f"adapter num_tokens must be a positive int, got {self.num_tokens!r}")
        if self.num_tokens <= 0:
            raise ValueError(f"adapter num_tokens must be a positive int, got {self.num_tokens!r}")
        if isinstance(self.kinds, str) or not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(
                f"adapter kinds must be a non-empty subset of {KINDS}, got {self.kinds}"
            )
        if self.init not in ADAPTER_INITS:
            raise ValueError(f"adapter init must be one of {ADAPTER_INITS}, got {self.init!r}")
        perturbation = self.perturbation
        if (
            not isinstance(perturbation, (int, float))
            or not math.isfinite(perturbation)
            or perturbation < 0
        ):
            raise ValueError(
                f"adapter perturbation must be a finite number >= 0, got {perturbation!r}"
            )
        blocks = self.blocks
        if blocks is not None and (
            isinstance(blocks, (str, int))
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks)
        ):
            raise ValueError(
                f"adapter blocks must be None (every block) or a list of block indices >= 0, "
                f"got {blocks!r}"
            )
        if isinstance(self.modules_to_save, str) or not all(
            isinstance(m, str) and m for m in self.modules_to_save
        ):
            raise ValueError(
                "adapter modules_to_save must be a list of module names (e.g. ['head']), got "
                f"{self.modules_to_save!r}"
            )
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
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

    @property
    def adapters(self) -> list[str]:
        return list(self.adapter_keys)

    @torch.no_grad()
    def add(
        self,
        name: str,
        config: AdapterConfig,
        saved: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """A new adapter of ``config.num_tokens`` tokens: keys as ``config.init``, values drawn as
        the layer's value init (growth's rows); or the ``(keys, values)`` of a saved one."""
        base = self.base
        if saved is not None:
            keys, values = (t.to(base.key_tokens).clone() for t in saved)
        else:
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
        norm, extra_norm = row_norm(scores), row_norm(extra)
        # the norm over all n + m scores, exactly the layer's own where the adapter's are zero;
        # hypot's gradient at (0, 0) is 0/0, so rows whose adapter scores are zero skip it
        live = extra_norm > 0
        joint = torch.hypot(norm, torch.where(live, extra_norm, torch.ones_like(extra_norm)))
        norm = torch.where(live, joint, norm)
        scale = row_scale(norm, base.tau, base.eps, scores.dtype)
        weights, extra_weights = scores * scale, extra * scale
        if base.norm == "l2_norm_gelu":  # the norm of the scores, then GELU
            weights, extra_weights = F.gelu(weights), F.gelu(extra_weights)
        values = self.adapter_values[name] * base.value_multiplier  # μP: the layer's multiplier
        return base.dropout(weights) @ base.values() + base.dropout(extra_weights) @ values
