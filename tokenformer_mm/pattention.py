"""Pattention: a linear projection replaced by attention over learnable parameter tokens.

Input tokens ``x[..., d_in]`` attend to ``n`` parameter tokens with keys ``K[n, d_in]`` and values
``V[n, d_out]`` (DESIGN §1)::

    s = x @ K.T            # (..., n)  no 1/sqrt(d) scale: the official scale is 1
    y = theta(s) @ V       # (..., d_out)

``theta`` is a modified softmax chosen by ``norm``. Its temperature τ is a buffer pinned at
construction to ``sqrt(n)``: growing the layer later keeps τ, which is what makes growth exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("l2_norm_gelu", "gelu_l2_norm", "softmax")
KINDS = ("qkv", "proj", "ffn")
KEY_INIT_STD = 0.02  # official init of the key tokens: N(0, 0.02)


def pattention_theta(
    scores: torch.Tensor, norm: str, tau: torch.Tensor, eps: float
) -> torch.Tensor:
    """The modified softmax ``theta(s)`` over the last dim of the scores.

    - ``l2_norm_gelu``: ``gelu(s / ‖s‖₂ · τ)`` (the official default, paper Eq. 16)
    - ``gelu_l2_norm``: ``gelu(s) / ‖gelu(s)‖₂ · τ``
    - ``softmax``: ``softmax(s) · τ²`` (the official ``exp / L1 · n``, computed stably)

    Norms are clamped below by ``eps``, so an all-zero row maps to zeros, never NaN.
    """
    if norm == "l2_norm_gelu":
        return F.gelu(F.normalize(scores, dim=-1, eps=eps) * tau)
    if norm == "gelu_l2_norm":
        return F.normalize(F.gelu(scores), dim=-1, eps=eps) * tau
    if norm == "softmax":
        return torch.softmax(scores, dim=-1) * (tau * tau)
    # a literal message: TorchScript cannot read the NORMS global
    raise ValueError(
        "unknown Pattention norm '" + norm + "'; expected l2_norm_gelu, gelu_l2_norm or softmax"
    )


def wang_init_std(dim: int, depth: int) -> float:
    """GPT-NeoX "wang init" std, ``2 / (L · sqrt(d))``: the official init of the value tokens."""
    return 2.0 / (depth * math.sqrt(dim))


def _check_in_features(x: torch.Tensor, in_features: int) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(
            f"Pattention expects inputs with last dim in_features={in_features}, "
            f"got shape {list(x.shape)}"
        )


# A leaf for torch.fx: the shape check stays a call in traced graphs instead of breaking tracing.
torch.fx.wrap("_check_in_features")


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
    """

    __jit_unused_properties__ = ["num_tokens"]  # noqa: RUF012  (TorchScript reads this list)

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("num_tokens", num_tokens),
            ("depth", depth),
        ):
            if not isinstance(value, int) or value <= 0:
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
        self.value_init_std = wang_init_std(out_features, depth)
        self.key_tokens = nn.Parameter(torch.empty(num_tokens, in_features, **factory))
        self.value_tokens = nn.Parameter(torch.empty(num_tokens, out_features, **factory))
        # τ is state, not a hyper-parameter: it is saved with the weights and survives growth.
        self.register_buffer("tau", torch.tensor(math.sqrt(num_tokens), **factory))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        return self.key_tokens.shape[0]

    def reset_parameters(self) -> None:
        nn.init.normal_(self.key_tokens, std=KEY_INIT_STD)
        nn.init.normal_(self.value_tokens, std=self.value_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_in_features(x, self.in_features)
        scores = F.linear(x, self.key_tokens)  # (..., n)
        weights = self.dropout(pattention_theta(scores, self.norm, self.tau, self.eps))
        return weights @ self.value_tokens  # (..., d_out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_tokens={self.num_tokens}, norm={self.norm}, kind={self.kind}, "
            f"tau={self.tau.item():.4g}"
        )
