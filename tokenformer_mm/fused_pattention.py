"""The fused Pattention path: one autograd function that keeps only what backward needs.

Autograd over the plain formula saves every elementwise intermediate of ``theta`` (the scores,
the norm, the scaled scores, the GELU output, ...), several ``[tokens, n]`` tensors per layer.
``PattentionFunction`` saves the input and ONE ``[tokens, n]`` tensor (plus a ``[tokens]`` norm),
as much as the bare ``(x @ K.T) @ V`` keeps, and recomputes the elementwise part in backward,
where the analytic gradient of the norm and GELU takes a handful of in-place passes. It is
differentiable once (a gradient penalty needs the plain path).

Several Pattentions that read the same input (a block's q, k and v) run as one *group*: their
scores in one ``[m, tokens, n]`` buffer, one set of elementwise passes over it, the input saved
once, and its gradient accumulated in place instead of summed by autograd. (One matmul against
the concatenated keys measured no faster on CPU than ``m`` matmuls into one buffer, and it
costs a copy of the keys.)

Everything here is plain ATen, so the same code runs on CPU and CUDA, and ``torch.compile``
traces through it, forward and backward. What remains above the cost of the matmuls is memory
traffic: about twenty reads or writes of ``[tokens, n]`` per forward + backward (see
docs/benchmarks.md).
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .theta import accumulation_dtype, row_scale, theta, value_scale

gelu_backward = torch.ops.aten.gelu_backward.grad_input  # the out= overload


def _row_dot(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
    """Row-wise ``<a, b>`` (at least fp32), the product written into ``scratch`` (new if None)."""
    product = torch.mul(a, b, out=scratch)
    return product.sum(-1, keepdim=True, dtype=accumulation_dtype(a.dtype))


def _unit_norm_backward(
    grad: torch.Tensor,
    scaled: torch.Tensor,
    norm: torch.Tensor,
    tau: torch.Tensor,
    eps: float,
    scratch: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient through ``scaled = tau · v / max(‖v‖, eps)`` given ``grad`` wrt ``scaled``.

    ``c · (grad − scaled · <grad, scaled> / tau²)`` with ``c = tau / max(‖v‖, eps)``; the
    projection term vanishes on rows whose norm was clamped (the denominator is constant there).
    Written into ``grad``.
    """
    dot = _row_dot(grad, scaled, scratch) / (tau * tau)
    dot = dot.masked_fill_(norm < eps, 0.0).to(grad.dtype)
    return grad.addcmul_(scaled, dot, value=-1.0).mul_(row_scale(norm, tau, eps, grad.dtype))


def theta_recompute(
    saved: tuple[torch.Tensor, ...], norm: str, tau: torch.Tensor, eps: float
) -> torch.Tensor:
    """``theta(scores)`` again, from what ``theta.theta`` saved."""
    if norm == "l2_norm_gelu":
        return F.gelu(saved[0])
    if norm == "gelu_l2_norm":
        scores, row_norm = saved
        return F.gelu(scores).mul_(row_scale(row_norm, tau, eps, scores.dtype))
    return saved[0]  # softmax saves its weights, softmax(scores)


def theta_backward(
    grad: torch.Tensor,
    weights: torch.Tensor,
    saved: tuple[torch.Tensor, ...],
    norm: str,
    tau: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """d loss / d scores from ``grad`` = d loss / d theta (overwritten).

    ``weights`` is ``theta_recompute``'s result; the caller is done with it, so it may serve as
    scratch space.
    """
    if norm == "l2_norm_gelu":
        scaled, row_norm = saved
        grad = gelu_backward(grad, scaled, grad_input=grad)  # out= the input: no new buffer
        return _unit_norm_backward(grad, scaled, row_norm, tau, eps, scratch=weights)
    if norm == "gelu_l2_norm":
        scores, row_norm = saved  # here the weights are the normalised vector itself
        grad = _unit_norm_backward(grad, weights, row_norm, tau, eps, scratch=None)
        return gelu_backward(grad, scores, grad_input=grad)
    return torch._softmax_backward_data(grad, weights, -1, grad.dtype)  # one fused kernel


def _scaled(values, norm: str, tau: torch.Tensor) -> list[torch.Tensor]:
    """The values as the matmuls use them: times ``value_scale`` where theta has one."""
    scale = value_scale(norm, tau)
    if scale is None:
        return list(values)
    return [value * scale[i].to(value.dtype) for i, value in enumerate(values)]


class PattentionFunction(torch.autograd.Function):
    """``m`` Pattentions with the same input and token count, evaluated together.

    Inputs: ``x`` (..., d_in), ``tau`` (m,), ``norm``, ``eps``, then the ``m`` key tensors
    (n, d_in) and the ``m`` value tensors (n, d_out_i). Returns the ``m`` outputs
    (..., d_out_i). Scores live in one ``(m, tokens, n)`` buffer, so each member's slice is
    contiguous for its matmuls.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: torch.Tensor, norm: str, eps: float, *tokens):
        members = len(tokens) // 2
        keys, values = tokens[:members], tokens[members:]
        flat = x.reshape(-1, x.shape[-1])
        scores = flat.new_empty(members, flat.shape[0], keys[0].shape[0])  # (m, T, n)
        for i, key in enumerate(keys):
            torch.mm(flat, key.t(), out=scores[i])
        tau = tau.view(members, 1, 1)  # its own dtype: scales are computed in fp32
        weights, saved = theta(scores, norm, tau, eps, inplace=True)
        outputs = [weights[i] @ value for i, value in enumerate(_scaled(values, norm, tau))]
        ctx.save_for_backward(flat, tau, *keys, *values, *saved)
        ctx.norm, ctx.eps = norm, eps
        ctx.members, ctx.input_shape = members, x.shape
        return tuple(y.view(*x.shape[:-1], y.shape[-1]) for y in outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        members = ctx.members
        flat, tau, *rest = ctx.saved_tensors
        keys, values = rest[:members], rest[members : 2 * members]
        saved = tuple(rest[2 * members :])
        grads = [g.reshape(-1, g.shape[-1]) for g in grads]
        needs = ctx.needs_input_grad[4:]  # x, tau, norm, eps, then keys and values
        weights = theta_recompute(saved, ctx.norm, tau, ctx.eps)
        scale = value_scale(ctx.norm, tau)
        grad_values = []
        for i, grad in enumerate(grads):  # a loop: a comprehension would make `weights` a cell
            grad_value = None
            if needs[members + i]:
                grad_value = weights[i].t() @ grad
                if scale is not None:
                    grad_value.mul_(scale[i])
            grad_values.append(grad_value)
        grad_keys, grad_x = [None] * members, None
        needs_x = ctx.needs_input_grad[0]
        if not (needs_x or any(needs[:members])):  # only the values train
            return grad_x, None, None, None, *grad_keys, *grad_values
        grad_weights = flat.new_empty(members, flat.shape[0], keys[0].shape[0])
        for i, (grad, value) in enumerate(zip(grads, _scaled(values, ctx.norm, tau), strict=True)):
            torch.mm(grad, value.t(), out=grad_weights[i])
        grad_scores = theta_backward(grad_weights, weights, saved, ctx.norm, tau, ctx.eps)
        del weights  # before the last matmuls (dynamo could not delete a closure's cell)
        grad_keys = [grad_scores[i].t() @ flat if needs[i] else None for i in range(members)]
        if needs_x:
            grad_x = grad_scores[0] @ keys[0]
            for i in range(1, members):  # out= rather than addmm_: FlopCounterMode counts it
                torch.addmm(grad_x, grad_scores[i], keys[i], out=grad_x)
            grad_x = grad_x.view(ctx.input_shape)
        return grad_x, None, None, None, *grad_keys, *grad_values


@torch.jit.ignore  # an fx graph calls it as one node; TorchScript of that graph calls back here
def fused_pattention(
    x: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    tau: torch.Tensor,
    norm: str,
    eps: float,
) -> list[torch.Tensor]:
    """Run Pattentions sharing the input ``x`` through ``PattentionFunction``.

    Under autocast the inputs are cast once to the autocast dtype (what autocast does to a
    matmul) and the function runs with autocast off, so its saved tensors stay in that dtype.
    """
    device_type = x.device.type  # "meta" (structure-only models) has no autocast at all
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x = x.to(dtype)
        keys = [k.to(dtype) for k in keys]
        values = [v.to(dtype) for v in values]
        with torch.autocast(device_type, enabled=False):
            return list(PattentionFunction.apply(x, tau, norm, eps, *keys, *values))
    return list(PattentionFunction.apply(x, tau, norm, eps, *keys, *values))
