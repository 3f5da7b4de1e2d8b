"""What differs from a ViT in the first steps at full lr: the residual branches' scale and sharing.

    python scripts/study_branch_scale.py --seeds 0 1 2

Each model trains on the digits (32x32, AdamW, batch 32) for one epoch at lr 1e-5 and then at the
full lr at once: timm's schedule with one warm-up epoch, where the paper-init Tokenformer can stay
at chance. At chosen steps it records, per block, the RMS of each residual branch's output (the
attention projection and the FFN) and its *shared fraction*: the part of its energy that is the
same for every token of an image, ``‖mean_t y‖² / mean_t ‖y‖²`` (1: the branch adds one vector to
all tokens). Raw rows go to ``--csv``, a table of the FFN branches to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

import tokenformer_mm.vision  # noqa: F401  (registers the models with timm)
from benchmarks.common import REPORT, record, variant_settings
from benchmarks.matched import MATCHED_VIT_MICRO

DOCS = Path(__file__).resolve().parent.parent / "docs"
MODELS = {
    "Tokenformer (default: LayerScale 0.1)": "tokenformer_micro_patch4_32",
    "Tokenformer (paper: no LayerScale)": "tokenformer_micro_patch4_32 init_values=0",
    "matched ViT, plain (no LayerScale)": MATCHED_VIT_MICRO,
}


def build(variant: str) -> torch.nn.Module:
    name, *settings = variant.split()
    return timm.create_model(name, num_classes=10, **variant_settings(variant, settings))


def branches(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The module whose output each residual branch adds, per block."""
    out = {}
    for i, block in enumerate(model.blocks):
        if hasattr(block, "ffn"):  # Tokenformer
            out[f"attn{i}"], out[f"ffn{i}"] = block.proj, block.ffn
        else:  # timm ViT
            out[f"attn{i}"], out[f"ffn{i}"] = block.attn.proj, block.mlp
    return out


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    return (x - 0.45) / 0.27, torch.tensor(data.target)


def study(label: str, variant: str, seed: int, args: argparse.Namespace, x, y) -> list[dict]:
    torch.manual_seed(seed)
    model = build(variant)
    stats: dict[str, tuple[float, float]] = {}

    def hook(name: str):
        def record_output(module, inputs, output):
            out = output.detach()
            shared = out.mean(1).pow(2).sum(-1).mean() / out.pow(2).sum(-1).mean()
            stats[name] = (out.pow(2).mean().sqrt().item(), shared.item())

        return record_output

    for name, module in branches(model).items():
        module.register_forward_hook(hook(name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=2e-5)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(args.warmup_steps + max(args.record)):
        if step == args.warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = args.lr
        batch = torch.randint(0, len(y), (32,), generator=generator)
        loss = F.cross_entropy(model(x[batch]), y[batch], label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after = step + 1 - args.warmup_steps
        if after in args.record:
            for name, (rms, shared) in stats.items():
                rows.append(
                    {"model": label, "seed": seed, "steps_at_full_lr": after, "branch": name,
                     "rms": f"{rms:.3f}", "shared": f"{shared:.3f}", "loss": f"{loss.item():.3f}"}
                )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=45, help="one epoch at lr 1e-5")
    parser.add_argument("--record", type=int, nargs="+", default=[0, 10, 30, 60])
    parser.add_argument("--csv", type=Path, default=DOCS / "branch_scale.csv")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x, y = digits()
    rows = [
        row
        for label, variant in MODELS.items()
        for seed in args.seeds
        for row in study(label, variant, seed, args, x, y)
    ]
    with args.csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = []
    for label in MODELS:
        for after in args.record:
            mine = [
                r for r in rows
                if r["model"] == label and r["steps_at_full_lr"] == after
                and r["branch"].startswith("ffn")
            ]  # fmt: skip
            table.append(
                {"model": label, "steps at full lr": after,
                 "FFN output RMS": f"{np.mean([float(r['rms']) for r in mine]):.2f}",
                 "FFN shared fraction": f"{np.mean([float(r['shared']) for r in mine]):.2f}",
                 "max over blocks": f"{max(float(r['shared']) for r in mine):.2f}"}
            )  # fmt: skip
    record(
        "Residual branches in the first steps at full lr: Tokenformer vs the matched ViT",
        table,
        notes=(
            f"The digits, AdamW, batch 32, {args.warmup_steps} steps at lr 1e-5 then lr "
            f"{args.lr:g}; mean over the blocks' FFN outputs and seeds {args.seeds}. The output "
            "is the FFN Pattention's (the timm ViT's MLP's), before LayerScale: a LayerScale "
            "block adds gamma (0.1 at the start) times it. The residual stream's own RMS is "
            f"~0.7 (the patch embedding). Every branch and the attention projections: "
            f"`{args.csv.name}`."
        ),
        report=args.report,
    )


if __name__ == "__main__":
    main()
