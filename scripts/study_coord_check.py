"""Coordinate check (as the ``mup`` package does it): does a Pattention's output, and its change
after a few AdamW steps, stay the same size as the token count grows?

    python scripts/study_coord_check.py --multipliers 1 2 4 8 --steps 10 --lr 3e-3 --seeds 0 1 2

The language main job's model (``lm_small``: d = 128, 2 blocks) with ``16k / 16k / 64k``
q/k/v, proj and FFN tokens for each multiplier ``k``, trained on the batches of
``data=stdlib`` (seq 128, batch 16) at a constant rate with the engine's AdamW groups. For each
parametrization it records, per layer kind, the RMS of the Pattention outputs on a held-out batch
at init and the RMS of their change after each step (mean over layers and seeds). Under a
parametrization that transfers across token counts both are flat in ``k``; under the paper's the
change grows with ``k`` (docs/design.md, "Learning rate across token counts").

``mup`` is the library's (stored values drawn at ``wang · sqrt(n / base)``, effective std
``wang · sqrt(base / n)``); ``mup-wang-init`` the alternative it was chosen over: the same
multiplier with the stored values at the wang init (effective std ``wang · base / n``, μP's
output-layer init).
Rows go to ``--csv``, the plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import torch
from bench_lm_grid import job_config
from tqdm import tqdm

from tokenformer_mm import Pattention
from tokenformer_mm.language.task import block_targets
from tokenformer_mm.train import build_task
from tokenformer_mm.train.optim import param_groups

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("standard", "mup", "mup-wang-init")
KINDS = ("qkv", "proj", "ffn")
FIELDS = ["variant", "multiplier", "seed", "kind", "step", "rms"]


def build(task, variant: str, multiplier: int) -> torch.nn.Module:
    """The task's model at ``multiplier`` x 16 / 16 / 64 tokens under ``variant``."""
    task.config = dataclasses.replace(
        task.config, qkv_tokens=16 * multiplier, proj_tokens=16 * multiplier,
        ffn_tokens=64 * multiplier, parametrization="standard" if variant == "standard" else "mup",
    )  # fmt: skip
    model = task.build_model()
    if variant == "mup-wang-init":
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, Pattention):
                    layer.value_tokens.normal_(std=layer.wang_init_std)
    return model


def outputs_by_kind(model: torch.nn.Module, batch) -> dict[str, list[torch.Tensor]]:
    """Every Pattention's output on ``batch``, grouped by kind (forward hooks)."""
    captured: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    hooks = [
        layer.register_forward_hook(
            lambda m, args, out: captured[m.kind].append(out.detach().clone())
        )
        for layer in model.modules()
        if isinstance(layer, Pattention)
    ]
    with torch.no_grad():
        model(block_targets(batch)[0])
    for hook in hooks:
        hook.remove()
    return captured


def rms(tensors: list[torch.Tensor]) -> float:
    return float(np.mean([t.pow(2).mean().sqrt().item() for t in tensors]))


def check(variant: str, multiplier: int, seed: int, steps: int, lr: float, task, batches, probe):
    """Rows of one run: step 0 is the outputs' RMS at init, step t the RMS of their change."""
    torch.manual_seed(seed)
    model = build(task, variant, multiplier)
    cfg = task.cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.token_weight_decay), lr=lr, betas=cfg.betas
    )
    start = outputs_by_kind(model, probe)
    rows = [dict(step=0, kind=k, rms=rms(v)) for k, v in start.items()]
    for step, batch in enumerate(batches[:steps], 1):
        task.training_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        now = outputs_by_kind(model, probe)
        for kind in KINDS:
            change = [a - b for a, b in zip(now[kind], start[kind], strict=True)]
            rows.append(dict(step=step, kind=kind, rms=rms(change)))
    return [dict(variant=variant, multiplier=multiplier, seed=seed, **row) for row in rows]


def cell_means(rows: list[dict], variant: str, kind: str, step: int):
    """(token multipliers, mean RMS over seeds at each) of one curve."""
    mine = [r for r in rows if (r["variant"], r["kind"], r["step"]) == (variant, kind, step)]
    ks = sorted({r["multiplier"] for r in mine})
    return ks, [float(np.mean([r["rms"] for r in mine if r["multiplier"] == k])) for k in ks]


def plot(rows: list[dict], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    fig, axes = plt.subplots(len(variants), len(KINDS), figsize=(10, 2.8 * len(variants)),
                             sharex=True, sharey="col", squeeze=False)  # fmt: skip
    shown = sorted({1, max(1, steps // 2), steps})
    for (i, variant), (j, kind) in itertools.product(enumerate(variants), enumerate(KINDS)):
        ax = axes[i][j]
        for c, step in enumerate([0, *shown]):
            ks, ys = cell_means(rows, variant, kind, step)
            label = "output at init" if step == 0 else f"change after {step} steps"
            ax.plot(ks, ys, marker="o", color=f"C{c}", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{variant}: {kind} Pattentions", fontsize=9)
        if i == len(variants) - 1:
            ax.set_xlabel("tokens (x 16 / 16 / 64)")
        if j == 0:
            ax.set_ylabel("RMS")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--multipliers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "coord_check.csv")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "coord_check.png")
    parser.add_argument("--report-only", action="store_true", help="no runs: plot --csv")
    args = parser.parse_args(argv)
    if args.report_only:
        with args.csv.open() as f:
            rows = [{**r, "multiplier": int(r["multiplier"]), "step": int(r["step"]),
                     "rms": float(r["rms"])} for r in csv.DictReader(f)]  # fmt: skip
        plot(rows, args.plot, max(r["step"] for r in rows))
        summary(rows)
        return
    cfg = job_config("language", ["data=stdlib", "data.seq_len=128", "train.batch_size=16"])
    task = build_task(cfg)
    loader = iter(task.train_loader())
    batches = [next(loader) for _ in range(args.steps)]
    probe = next(iter(task.eval_loader()))
    runs = list(itertools.product(args.variants, args.multipliers, args.seeds))
    rows = []
    for variant, multiplier, seed in tqdm(runs, desc="coordinate check"):
        rows += check(variant, multiplier, seed, args.steps, args.lr, task, batches, probe)
    with args.csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({**r, "rms": f"{r['rms']:.5g}"} for r in rows)
    plot(rows, args.plot, args.steps)
    summary(rows)


def summary(rows: list[dict]) -> None:
    """Per variant and kind: the largest count's RMS over the smallest's (1: flat in n)."""
    steps = max(r["step"] for r in rows)
    print("| parametrization | layers | output at init, x16 / x1 | change after "
          f"{steps} steps, x16 / x1 |\n|---|---|---|---|")  # fmt: skip
    for variant, kind in itertools.product(VARIANTS, KINDS):
        means = [cell_means(rows, variant, kind, step)[1] for step in (0, steps)]
        if means[0]:
            ratios = " | ".join(f"{m[-1] / m[0]:.2f}" for m in means)
            print(f"| {variant} | {kind} | {ratios} |")


if __name__ == "__main__":
    main()
