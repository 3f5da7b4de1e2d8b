"""Does a learning rate tuned at one token count hold at another? The rate sweeps.

    python scripts/study_lr_transfer.py                  # run what the CSV lacks, then report
    python scripts/study_lr_transfer.py --report-only    # the table and plot of what is done
    python scripts/study_lr_transfer.py --domain vision  # the image tower on the digits

Three token counts of the language model (d = 128, 2 blocks: x1 16 / 16 / 64, x4 64 / 64 / 256,
x16 256 / 256 / 1024 q/k/v, proj and FFN tokens) under the paper's parametrization and μP
(``parametrization=mup``), each at 5 rates a factor 2 apart, through the engine: the language
job on the standard library's source (``data=stdlib``, seq 128, batch 16, 2000 steps, cosine),
one ``scripts/bench_lm_grid.py`` run per cell, appended to ``--csv`` as it ends (a stopped
study resumes; a fresh clone with the CSV runs only what it lacks). ``--seeds`` are the
screening seeds; ``--confirm-seeds`` repeat each size's best cell. The table (mean, spread, seeds
per cell; each size's best rate) is printed for docs/benchmarks.md, the plot written to
``--plot``. ``--domain vision``: the vision main job (the digits, ``tokenformer_micro_patch4_32``,
d = 96, 4 blocks) at x1 24 / 96, x4 96 / 384 (its default) and x16 384 / 1536 tokens, 4 rates
around its default 2e-3, 400 steps (half the main job's).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import bench_lm_grid

DOCS = Path(__file__).resolve().parent.parent / "docs"
PARAMETRIZATIONS = ("standard", "mup")


@dataclass(frozen=True)
class Sweep:
    """One domain's sweep: its main job, token counts, rates and job overrides."""

    config_name: str
    sizes: dict[str, tuple[int, int]]  # name -> (q/k/v and proj, FFN) tokens
    lrs: tuple[float, ...]
    overrides: tuple[str, ...]
    steps: int
    unit: str


SWEEPS = {
    "language": Sweep(
        "language", {"x1": (16, 64), "x4": (64, 256), "x16": (256, 1024)},
        (3.75e-4, 7.5e-4, 1.5e-3, 3e-3, 6e-3),
        ("data=stdlib", "data.seq_len=128", "train.steps=2000", "train.eval_every=500",
         "train.checkpoint_every=1000"), 2000, "nats/byte",
    ),
    "vision": Sweep(
        "vision", {"x1": (24, 96), "x4": (96, 384), "x16": (384, 1536)},
        (1e-3, 2e-3, 4e-3, 8e-3),
        ("train.steps=400", "train.eval_every=200", "train.checkpoint_every=400"), 400, "nats",
    ),
}  # fmt: skip


def model(sweep: Sweep, size: str, parametrization: str) -> str:
    """The ``bench_lm_grid`` model of a cell: the Tokenformer with its settings."""
    attention, ffn = sweep.sizes[size]
    settings = f"qkv_tokens={attention} proj_tokens={attention} ffn_tokens={ffn}"
    return f"tokenformer {settings}" + (" parametrization=mup" if parametrization == "mup" else "")


def run(
    sweep: Sweep, csv_path: Path, lrs: list[float], seeds: list[int], models: list[str]
) -> None:
    """The cells of ``lrs`` x ``seeds`` x ``models`` the CSV lacks (two at a time)."""
    bench_lm_grid.main(
        ["--config-name", sweep.config_name, "--overrides", *sweep.overrides,
         "--csv", str(csv_path), "--lrs", *map(str, lrs), "--seeds", *map(str, seeds),
         "--models", *models, "--report", "/dev/null", "--plot", "/dev/null"]
    )  # fmt: skip


def cells(sweep: Sweep, csv_path: Path) -> dict[tuple[str, str, float], list[float]]:
    """(parametrization, size, lr) -> the final validation losses of its seeds."""
    names = {model(sweep, s, p): (p, s) for s in sweep.sizes for p in PARAMETRIZATIONS}
    out: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            if row["model"] in names:
                out[(*names[row["model"]], float(row["lr"]))].append(float(row["final"]))
    return out


def best_rates(found: dict) -> dict[tuple[str, str], float]:
    """Each (parametrization, size)'s rate of lowest mean loss."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for (p, s, lr), losses in found.items():
        mean = statistics.mean(losses)
        if (p, s) not in best or mean < best[(p, s)][1]:
            best[(p, s)] = (lr, mean)
    return {key: lr for key, (lr, _) in best.items()}


def table(sweep: Sweep, found: dict) -> str:
    best, lrs = best_rates(found), sweep.lrs
    lines = ["| parametrization | tokens | " + " | ".join(f"lr {lr:g}" for lr in lrs)
             + " | best lr |", "|---|---|" + "---|" * (len(lrs) + 1)]  # fmt: skip
    for p in PARAMETRIZATIONS:
        for s, (attention, ffn) in sweep.sizes.items():
            if (p, s) not in best:
                continue
            row = []
            for lr in lrs:
                losses = found.get((p, s, lr), [])
                text = f"{statistics.mean(losses):.3f}" if losses else "-"
                if len(losses) > 1:
                    text += f" ± {statistics.pstdev(losses):.3f} ({len(losses)})"
                row.append(f"**{text}**" if lr == best[(p, s)] else text)
            label = f"{s} ({attention}/{attention}/{ffn})"
            lines.append(f"| {p} | {label} | " + " | ".join(row) + f" | {best[(p, s)]:g} |")
    return "\n".join(lines)


def plot(sweep: Sweep, found: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, p in zip(axes, PARAMETRIZATIONS, strict=True):
        for i, s in enumerate(sweep.sizes):
            lrs = [lr for lr in sweep.lrs if (p, s, lr) in found]
            for lr in lrs:
                ax.scatter([lr] * len(found[(p, s, lr)]), found[(p, s, lr)], s=10, color=f"C{i}")
            means = [statistics.mean(found[(p, s, lr)]) for lr in lrs]
            ax.plot(lrs, means, marker="o", color=f"C{i}", label=f"{s} tokens")
            best = lrs[means.index(min(means))]
            ax.scatter([best], [min(means)], s=80, facecolors="none", edgecolors=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sweep.lrs, [f"{lr:g}" for lr in sweep.lrs])
        ax.set_xlabel("lr")
        ax.set_title("the paper's parametrization" if p == "standard" else "μP", fontsize=9)
    axes[0].set_ylabel(f"final validation loss ({sweep.unit})")
    axes[0].legend(fontsize=8)
    title = f"{sweep.config_name}, {sweep.steps} steps: loss against lr per token count"
    fig.suptitle(title + " (circle: best)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--domain", choices=tuple(SWEEPS), default="language")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--confirm-seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--csv", type=Path, help="default: docs/lr_transfer_<domain>.csv")
    parser.add_argument("--plot", type=Path, help="default: docs/lr_transfer_<domain>.png")
    parser.add_argument("--report-only", action="store_true", help="no runs: table and plot")
    args = parser.parse_args(argv)
    sweep = SWEEPS[args.domain]
    csv_path = args.csv or DOCS / f"lr_transfer_{args.domain}.csv"
    every = [model(sweep, s, p) for s in sweep.sizes for p in PARAMETRIZATIONS]
    if not args.report_only:
        run(sweep, csv_path, list(sweep.lrs), args.seeds, every)
        for (p, s), lr in best_rates(cells(sweep, csv_path)).items():
            run(sweep, csv_path, [lr], args.confirm_seeds, [model(sweep, s, p)])
    found = cells(sweep, csv_path)
    plot(sweep, found, args.plot or DOCS / f"lr_transfer_{args.domain}.png")
    print(table(sweep, found))


if __name__ == "__main__":
    main()
