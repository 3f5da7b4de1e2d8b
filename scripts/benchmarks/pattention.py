"""Pattention alone: fused vs plain vs the official formula vs the matmul-only bound."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from benchmarks.common import (
    ROOT,
    default_device,
    interleaved_seconds,
    mixed_precision,
    precision_note,
    record,
)


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``BxTxDxN`` or ``BxTxDxNxM`` (M layers sharing the input, like q/k/v) -> (B, T, D, N, M)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (4, 5) or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: expected BxTxDxN or BxTxDxNxM with positive ints, e.g. 8x197x384x384"
        )
    return (*values, 1)[:5]  # type: ignore[return-value]


# The issue's shapes (ViT-S attention and FFN, a GPT-base FFN), then ViT-B/16's at batch 8.
PATTENTION_SHAPES = (
    "8x197x384x384",
    "8x197x384x1536",
    "8x256x768x3072",
    "8x197x768x768",
    "8x197x768x3072",
    "8x197x768x768x3",
)


def pattention_case(
    shape: tuple[int, int, int, int, int], args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds per fwd+bwd and bytes saved for backward of each variant at one shape."""
    sys.path.insert(0, str(ROOT))  # the references live beside the tests
    from tests.reference import official_pattention, saved_activation_bytes
    from tokenformer_mm.pattention import Pattention, pattention_group

    B, T, d, n, m = shape
    torch.manual_seed(0)
    layers = [Pattention(d, d, n, norm=args.norm, device=device) for _ in range(m)]
    params = [p for layer in layers for p in layer.parameters()]
    x = torch.randn(B, T, d, device=device, requires_grad=True)
    grads = [torch.randn(B, T, d, device=device) for _ in layers]
    autocast = mixed_precision(device)

    def on_path(fused: bool) -> Callable[[], list[torch.Tensor]]:
        def forward() -> list[torch.Tensor]:
            for layer in layers:
                layer.fused = fused
            return pattention_group(layers, x)

        return forward

    forwards: dict[str, Callable[[], list[torch.Tensor]]] = {
        "matmul-only bound": lambda: [(x @ p.key_tokens.t()) @ p.value_tokens for p in layers],
        "fused": on_path(True),
        "plain": on_path(False),
        "official": lambda: [
            official_pattention(x, p.key_tokens, p.value_tokens, args.norm) for p in layers
        ],
    }

    def train_step(forward: Callable[[], list[torch.Tensor]]) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            for p in params:
                p.grad = None
            with autocast:
                outputs = forward()
            torch.autograd.backward(outputs, grads)

        return step

    seconds = interleaved_seconds(
        {name: train_step(f) for name, f in forwards.items()}, args.repeats, device
    )
    saved = {}
    for name, forward in forwards.items():
        with autocast:
            saved[name] = saved_activation_bytes(forward, exclude=params)
    return seconds, saved


def bench_pattention(args: argparse.Namespace) -> None:
    device = default_device()
    rows, ratios = [], []
    for shape in args.shapes:
        B, T, d, n, m = shape
        seconds, saved = pattention_case(shape, args, device)
        bound = seconds["matmul-only bound"]
        ratios.append(seconds["fused"] / bound)
        for name in seconds:
            rows.append(
                {
                    "shape": f"B{B}·T{T} d{d} n{n}" + (f" ×{m} (q/k/v group)" if m > 1 else ""),
                    "variant": name,
                    "fwd+bwd ms": f"{seconds[name] * 1e3:.2f}",
                    "× bound": f"{seconds[name] / bound:.3f}",
                    "saved for backward (MiB)": f"{saved[name] / 2**20:.2f}",
                    "× official": f"{saved[name] / saved['official']:.2f}",
                }
            )
    met = sum(ratio <= 1.10 for ratio in ratios)
    record(
        f"Pattention fwd+bwd ({args.norm}, {device.type})",
        rows,
        notes=(
            f"Medians of {args.repeats} interleaved runs per variant; "
            + precision_note(device)
            + ". 'saved for backward' = bytes autograd keeps between forward and backward "
            "(saved_tensors_hooks; parameters excluded, the input x included). The fused path is "
            f"within 1.10x of the matmul-only bound at {met} of {len(ratios)} shapes."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: pattention."""
    patt = commands.add_parser("pattention", help="fused vs plain vs official Pattention")
    patt.add_argument(
        "--shapes", type=parse_shape, nargs="+", default=[parse_shape(s) for s in PATTENTION_SHAPES]
    )
    patt.add_argument("--norm", default="l2_norm_gelu")
    patt.add_argument("--repeats", type=int, default=15)
    patt.set_defaults(run=bench_pattention)
