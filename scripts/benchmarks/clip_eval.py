"""CLIP retrieval metrics of many pairs: peak memory and time, chunked vs the whole matrix."""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from benchmarks.common import (
    record,
)


def clip_eval_peak(pairs: int, chunked: bool, seed: int = 0) -> tuple[float, float, float]:
    """(seconds, peak RSS GiB, peak above the features GiB) of one CLIP evaluation's metrics.

    Runs in a fresh process (``clip_eval_memory`` spawns it), so the peak is this computation's:
    TokenformerCLIP-micro's feature width (128) and context (20), captions from 40 templates.
    """
    import resource

    import torch.nn.functional as F

    from tokenformer_mm.clip.metrics import clip_metrics

    def peak_gib() -> float:  # ru_maxrss is KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (pairs,), generator=generator)
    template = torch.randint(0, 4, (pairs,), generator=generator)
    tokens = torch.zeros(pairs, 20, dtype=torch.long)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, labels, template
    text = F.normalize(torch.randn(pairs, 128, generator=generator), dim=-1)
    image = F.normalize(text + torch.randn(pairs, 128, generator=generator), dim=-1)
    classes = F.normalize(torch.randn(10, 128, generator=generator), dim=-1)
    before = peak_gib()
    start = time.perf_counter()
    if chunked:
        clip_metrics(image, text, tokens, labels, classes, 100.0)
    else:  # what the evaluation did before: the whole N x N matrix and an N x N x T comparison
        logits = 100.0 * image @ text.T
        same_caption = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
        target = torch.arange(pairs)
        F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
        same_caption[target, logits.argmax(1)].float().mean()
    seconds = time.perf_counter() - start
    return seconds, peak_gib(), peak_gib() - before


def bench_clip_eval(args: argparse.Namespace) -> None:
    """Peak memory and time of the CLIP evaluation's metrics, each case in a fresh process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    cases = [(n, True) for n in args.pairs] + [(n, False) for n in args.full_matrix_pairs]
    rows = []
    for pairs, chunked in tqdm(cases, desc="clip-eval"):
        with context.Pool(1) as pool:
            seconds, peak, above = pool.apply(clip_eval_peak, (pairs, chunked))
        rows.append(
            {
                "pairs": f"{pairs:,}",
                "method": "chunked (clip_metrics)" if chunked else "whole N x N matrix",
                "seconds": f"{seconds:.2f}",
                "peak RSS GiB": f"{peak:.2f}",
                "above the features GiB": f"{above:.2f}",
            }
        )
    record(
        "CLIP evaluation metrics: memory at ImageNet-validation size",
        rows,
        notes=(
            "Random unit features of TokenformerCLIP-micro's width (128) and 20-token captions; "
            "each case in a fresh process (peak RSS includes torch itself). The whole-matrix way "
            "needs N² (4 + T) bytes: 60 GB at 50,000 pairs, so it is measured at smaller N only."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: clip-eval."""
    clip = commands.add_parser("clip-eval", help="CLIP evaluation metrics: peak memory, time")
    clip.add_argument("--pairs", type=int, nargs="+", default=[50_000])
    clip.add_argument("--full-matrix-pairs", type=int, nargs="*", default=[5_000])
    clip.set_defaults(run=bench_clip_eval)
