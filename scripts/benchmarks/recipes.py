"""Variants against the matched ViT / GPT under one small training recipe each."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import torch
from tqdm import tqdm

from benchmarks.common import (
    record,
)
from benchmarks.matched import (
    GPT,
    MATCHED_MLP_RATIO,
    byte_stream,
    digits_tensors,
)


def _key_init(text: str) -> str | float:
    """A key_init name ("fan_in", "official") or an explicit std ("0.2")."""
    try:
        return float(text)
    except ValueError:
        return text


def seeded_variants(
    args: argparse.Namespace, variants: dict[str, Callable[[], torch.nn.Module]]
) -> Iterator[tuple[int, str, torch.nn.Module]]:
    """Every variant for every seed of ``args.seeds``, built from ``torch.manual_seed(seed)``
    (``args.seed`` set for the run's own draws): (seed, name, model)."""
    for seed in tqdm(args.seeds, desc="seeds"):
        for name, build in variants.items():
            torch.manual_seed(seed)
            args.seed = seed
            yield seed, name, build()


def recipe_run(model: torch.nn.Module, data: tuple, args: argparse.Namespace) -> list[float]:
    """Validation top-1 after each epoch of one generic recipe (timm's train.py defaults' shape):
    AdamW, weight decay on matrices, warmup then cosine per step, label smoothing, random shifts."""
    import torch.nn.functional as F

    from tokenformer_mm.train.optim import WarmupCosine, param_groups

    x, y, val_x, val_y = data
    steps_per_epoch = len(x) // args.batch_size
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, None), lr=args.lr)
    schedule = WarmupCosine(steps_per_epoch, args.epochs * steps_per_epoch, 1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(args.seed)
    top1 = []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            images = torch.roll(x[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(images), y[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            top1.append(100 * (model(val_x).argmax(-1) == val_y).float().mean().item())
    return top1


def bench_recipe(args: argparse.Namespace) -> None:
    """tokenformer_micro_patch4_32 with each key init against the matched ViT, one recipe."""
    import timm

    import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models)

    data = digits_tensors()
    variants = {
        f"tokenformer_micro_patch4_32, key_init={k}": lambda k=k: timm.create_model(
            "tokenformer_micro_patch4_32", num_classes=10, key_init=k
        )
        for k in args.key_inits
    }
    variants["vit, same width/depth/heads, mlp_ratio 6 (matched)"] = lambda: timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3,
        mlp_ratio=MATCHED_MLP_RATIO, num_classes=10,
    )  # fmt: skip
    rows = []
    for seed, name, model in seeded_variants(args, variants):
        start = time.perf_counter()
        top1 = recipe_run(model, data, args)
        chance = next((i + 1 for i, t in enumerate(top1) if t > 25), "never")
        epochs = sorted({max(1, args.epochs // 4), max(1, args.epochs // 2), args.epochs})
        row = {"model": name, "seed": seed}
        row.update({f"epoch {e}": f"{top1[e - 1]:.1f}" for e in epochs})
        row.update({"first epoch > 25 %": chance})
        rows.append({**row, "seconds": f"{time.perf_counter() - start:.0f}"})
    record(
        "Initialisation: one generic recipe, Tokenformer vs the matched ViT",
        rows,
        notes=(
            f"Digits (1,437 train / 360 val, 32x32), AdamW lr {args.lr}, weight decay "
            f"{args.weight_decay} on matrices, batch {args.batch_size}, one epoch of warmup then "
            f"cosine, label smoothing 0.1, random shifts of up to 2 pixels, {args.epochs} epochs; "
            "validation top-1 %. Chance is 10 %."
        ),
        report=args.report,
    )


def lm_recipe_run(model: torch.nn.Module, train: torch.Tensor, val: torch.Tensor, args) -> dict:
    """Validation nats/byte along the language main job's recipe (configs/language.yaml): AdamW
    lr 3e-3, weight decay 0.1 on matrices, betas (0.9, 0.95), 100 warmup steps, cosine, clip 1."""
    from tokenformer_mm.train.optim import WarmupCosine, param_groups

    batch, length = args.batch_size, args.seq_len
    optimizer = torch.optim.AdamW(param_groups(model, 0.1, None), lr=args.lr, betas=(0.9, 0.95))
    schedule = WarmupCosine(100, args.steps, 1e-5 / args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(args.seed)
    blocks = (len(val) - 1) // length
    val_blocks = torch.stack([val[i * length : i * length + length + 1] for i in range(blocks)])
    curve = {}
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train) - length - 1, (batch,), generator=generator).tolist()
        tokens = torch.stack([train[s : s + length + 1] for s in starts])
        loss = model(tokens[:, :-1], tokens[:, 1:])[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                total = sum(
                    model(b[:, :-1], b[:, 1:])[1].item() * len(b) for b in val_blocks.split(32)
                )
            curve[step] = total / blocks
            model.train()
    return curve


def bench_lm_recipe(args: argparse.Namespace) -> None:
    """Tokenformer LM key inits vs the matched nanoGPT-style GPT: loss at equal training FLOPs."""
    from tokenformer_mm.flops import training_flops
    from tokenformer_mm.language import TokenformerLM, lm_config

    train, val = byte_stream("train"), byte_stream("val")
    config = lm_config(args.model, context_length=args.seq_len)
    variants: dict[str, Callable[[], torch.nn.Module]] = {
        f"Tokenformer {args.model}, key_init={k}": lambda k=k: TokenformerLM(
            lm_config(args.model, context_length=args.seq_len, key_init=k)
        )
        for k in args.key_inits
    }
    variants[f"nanoGPT-style GPT, mlp_ratio {MATCHED_MLP_RATIO:g} (matched)"] = lambda: GPT(
        config.vocab_size, config.context_length, config.dim, config.depth, config.num_heads,
        MATCHED_MLP_RATIO,
    )  # fmt: skip
    rows = []
    for seed, name, model in seeded_variants(args, variants):
        sample = torch.randint(0, config.vocab_size, (1, args.seq_len + 1))
        flops = training_flops(model, lambda m=model, x=sample: m(x[:, :-1], x[:, 1:])[1])
        start = time.perf_counter()
        curve = lm_recipe_run(model, train, val, args)
        row = {"model": name, "seed": seed}
        row.update({f"step {s}": f"{v:.3f}" for s, v in curve.items()})
        row["training TFLOPs"] = f"{flops * args.batch_size * args.steps / 1e12:.3g}"
        rows.append({**row, "seconds": f"{time.perf_counter() - start:.0f}"})
    record(
        "Language: Tokenformer key inits vs the matched GPT at equal FLOPs",
        rows,
        notes=(
            f"The CPython help texts as UTF-8 bytes, batch {args.batch_size} x {args.seq_len}, "
            f"{args.steps} steps of the language main job's recipe (AdamW lr {args.lr}, betas "
            "(0.9, 0.95), weight decay 0.1 on matrices, 100 warmup steps then cosine, gradient "
            "clipping 1.0) for every model; validation nats per byte on the whole validation "
            "split. FLOPs by FlopCounterMode (tokenformer_mm.flops)."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: recipe, lm-recipe."""
    rec = commands.add_parser("recipe", help="key inits vs the matched ViT under one recipe")
    rec.add_argument("--key-inits", nargs="+", default=["fan_in", "official"], type=_key_init)
    rec.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    rec.add_argument("--epochs", type=int, default=12)
    rec.add_argument("--lr", type=float, default=2e-3)
    rec.add_argument("--weight-decay", type=float, default=0.05)
    rec.add_argument("--batch-size", type=int, default=32)
    rec.set_defaults(run=bench_recipe)
    lm_rec = commands.add_parser("lm-recipe", help="LM variants vs the matched GPT, loss/FLOP")
    lm_rec.add_argument(
        "--model", default="small", help="a name in tokenformer_mm.language.CONFIGS"
    )
    lm_rec.add_argument("--key-inits", nargs="+", default=["fan_in"], type=_key_init)
    lm_rec.add_argument("--seeds", type=int, nargs="+", default=[0])
    lm_rec.add_argument("--steps", type=int, default=600)
    lm_rec.add_argument("--eval-every", type=int, default=200)
    lm_rec.add_argument("--lr", type=float, default=3e-3)
    lm_rec.add_argument("--batch-size", type=int, default=16)
    lm_rec.add_argument("--seq-len", type=int, default=256)
    lm_rec.set_defaults(run=bench_lm_recipe)
