"""tokenformer_* against timm ViTs of equal FLOPs or parameters: training and inference."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    adamw_step,
    default_device,
    interleaved_seconds,
    millions_of_params,
    mixed_precision,
    precision_note,
    record,
)
from benchmarks.matched import (
    MATCHED_MLP_RATIO,
    VIT_OF_WIDTH,
)


def bench_vision(args: argparse.Namespace) -> None:
    import timm

    import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models)
    from tokenformer_mm.flops import training_flops

    device = default_device()
    ours = timm.create_model(args.model)
    width = ours.num_features
    if width not in VIT_OF_WIDTH:
        raise ValueError(f"no timm ViT of width {width}; benchmark one of {sorted(VIT_OF_WIDTH)}")
    vit = VIT_OF_WIDTH[width]
    models = {
        args.model: ours,
        f"{vit}, mlp_ratio {MATCHED_MLP_RATIO:g} (equal FLOPs and params)": timm.create_model(
            vit, mlp_ratio=MATCHED_MLP_RATIO
        ),
        f"{vit}, mlp_ratio {MATCHED_MLP_RATIO:g}, LayerScale 0.1 (as the Tokenformer)": (
            timm.create_model(vit, mlp_ratio=MATCHED_MLP_RATIO, init_values=0.1)
        ),
        f"{vit} (reference)": timm.create_model(vit),
    }
    size = ours.pretrained_cfg["input_size"][-1]
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = mixed_precision(device)
    steps, inference, flops = {}, {}, {}
    for name, model in models.items():
        model.to(device)

        def loss(model: torch.nn.Module = model, batch: slice = slice(None)) -> torch.Tensor:
            with autocast:
                logits = model(images[batch])
            return torch.nn.functional.cross_entropy(logits.float(), labels[batch])

        flops[name] = training_flops(model, lambda m=model: loss(m, slice(0, 2))) / 2  # per image

        @torch.no_grad()
        def infer(model: torch.nn.Module = model) -> None:
            with autocast:
                model.eval()(images)
            model.train()

        steps[name] = adamw_step(model, lambda m=model: loss(m))
        inference[name] = infer
    train_s = interleaved_seconds(steps, args.repeats, device)
    infer_s = interleaved_seconds(inference, args.repeats, device)
    matched = list(models)[1]
    per_flop = {name: train_s[name] / (flops[name] * args.batch_size) for name in models}
    rows = [
        {
            "model": name,
            "params (M)": millions_of_params(model),
            "train GFLOPs / image": f"{flops[name] / 1e9:.2f}",
            "train step (ms)": f"{train_s[name] * 1e3:.0f}",
            "train ms / image": f"{train_s[name] * 1e3 / args.batch_size:.1f}",
            "time per FLOP vs plain matched ViT": f"{per_flop[name] / per_flop[matched]:.2f}x",
            "inference images/s": f"{args.batch_size / infer_s[name]:.0f}",
        }
        for name, model in models.items()
    ]
    record(
        f"Vision: {args.model} vs timm ViT ({device.type})",
        rows,
        notes=(
            f"Batch {args.batch_size} at {size}², AdamW step included, medians of {args.repeats} "
            "interleaved steps; "
            + precision_note(device)
            + ". FLOPs: FlopCounterMode on one fwd+bwd, attention by one convention "
            "(tokenformer_mm.flops)."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: vision."""
    vis = commands.add_parser("vision", help="tokenformer_* vs timm ViT, training and inference")
    vis.add_argument("--model", default="tokenformer_tiny_patch16_224")
    vis.add_argument("--batch-size", type=int, default=16)
    vis.add_argument("--repeats", type=int, default=8)
    vis.set_defaults(run=bench_vision)
