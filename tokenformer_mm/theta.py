"""theta, the modified softmax of Pattention: ONE definition for the plain and the fused path.

``theta`` maps a layer's scores ``s = x @ K.T`` (..., n) to the weights of its value tokens
(docs/design.md, "Pattention")::

    l2_norm_gelu   gelu(s / ‖s‖₂ · τ)          every official config (paper Eq. 16)
    gelu_l2_norm   gelu(s) / ‖gelu(s)‖₂ · τ    an ablation
    softmax        softmax(s) · τ²             official ``exp / L1 · n``, computed stably

The dtype policy is the same on every device and path: row statistics (norms, the softmax)
accumulate in at least fp32 and the scale ``τ / ‖·‖`` is computed in fp32; the ``[tokens, n]``
tensors themselves stay in the compute dtype (bf16 under autocast). Norms are clamped below by
``eps``, so an all-zero row maps to zeros, never NaN.

softmax's linear factor ``τ²`` is not applied to the weights but to the values
(``value_scale``): ``(c · w) @ V = w @ (c · V)`` scales ``[n, d]`` instead of ``[tokens, n]``, and
the fused backward of ``softmax`` is then the plain softmax backward, one kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS = ("l2_norm_gelu", "gelu_l2_norm", "softmax")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16 tensors (their sums would lose precision), else their own dtype."""
    return torch.promote_types(dtype, torch.float32)


def row_norm(values: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 norm (..., 1), accumulated in at least fp32."""
    return torch.linalg.vector_norm(
        values, 2.0, dim=-1, keepdim=True, dtype=accumulation_dtype(values.dtype)
    )


def row_scale(norm: torch.Tensor, tau: torch.Tensor, eps: float, dtype: torch.dtype):
    """``τ / max(norm, eps)`` in fp32, cast to ``dtype``: puts a row on the sphere of radius τ."""
    return (tau.to(norm.dtype) / norm.clamp_min(eps)).to(dtype)


def value_scale(norm: str, tau: torch.Tensor) -> torch.Tensor | None:
    """theta's linear factor, applied to the values (``softmax``: τ²); None where it has none."""
    if norm == "softmax":
        return tau * tau
    return None


def theta(
    scores: torch.Tensor, norm: str, tau: torch.Tensor, eps: float, inplace: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """theta(scores) without ``value_scale``, and the tensors the fused backward needs.

    ``tau`` broadcasts against ``scores[..., :1]``. ``inplace=True`` (the fused path, outside
    autograd) overwrites ``scores``; the plain path keeps it and lets autograd differentiate.
    Saved: ``l2_norm_gelu`` the scaled scores and the row norms, ``gelu_l2_norm`` the scores and
    the row norms of their GELU, ``softmax`` the weights.
    """
    if norm == "l2_norm_gelu":
        norms = row_norm(scores)
        scale = row_scale(norms, tau, eps, scores.dtype)
        scaled = scores.mul_(scale) if inplace else scores * scale  # s · τ / ‖s‖
        return F.gelu(scaled), [scaled, norms]
    if norm == "gelu_l2_norm":
        activated = F.gelu(scores)
        norms = row_norm(activated)
        scale = row_scale(norms, tau, eps, scores.dtype)
        weights = activated.mul_(scale) if inplace else activated * scale
        return weights, [scores, norms]
    if norm == "softmax":
        weights = torch.softmax(scores, dim=-1, dtype=accumulation_dtype(scores.dtype))
        weights = weights.to(scores.dtype)  # a no-op in fp32; bf16 as autocast's matmul wants
        return weights, [weights]
    # a literal message: TorchScript cannot format the NORMS global
    raise ValueError(
        "unknown Pattention norm '" + norm + "'; expected l2_norm_gelu, gelu_l2_norm or softmax"
    )


def pattention_theta(
    scores: torch.Tensor, norm: str, tau: torch.Tensor, eps: float
) -> torch.Tensor:
    """The full ``theta(s)`` over the last dim (``value_scale`` included): the reference form."""
    weights = theta(scores, norm, tau, eps)[0]
    scale = value_scale(norm, tau)
    return weights if scale is None else weights * scale.to(weights.dtype)
