"""Does a learning rate tuned at one token count hold at another? The language rate sweep.

    python scripts/study_lr_transfer.py                  # run what the CSV lacks, then report
    python scripts/study_lr_transfer.py --report-only    # the table and plot of what is done

Three token counts of the language model (d = 128, 2 blocks: x1 16 / 16 / 64, x4 64 / 64 / 256,
x16 256 / 256 / 1024 q/k/v, proj and FFN tokens) under the paper's parametrization and μP
(``parametrization=mup``), each at 5 rates a factor 2 apart, through the engine: the language
job on the standard library's source (``data=stdlib``, seq 128, batch 16, 2000 steps, cosine),
one ``scripts/bench_lm_grid.py`` run per cell, appended to ``--csv`` as it ends (a stopped
study resumes; a fresh clone with the CSV runs only what it lacks). ``--seeds`` are the
screening seeds; ``--confirm-seeds`` repeat each size's best cell. The table (mean, spread, seeds
per cell; each size's best rate) is printed for docs/benchmarks.md, the plot written to
``--plot``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

import bench_lm_grid

DOCS = Path(__file__).resolve().parent.parent / "docs"
SIZES = {"x1": (16, 64), "x4": (64, 256), "x16": (256, 1024)}  # (q/k/v and proj, FFN) tokens
PARAMETRIZATIONS = ("standard", "mup")
LRS = (3.75e-4, 7.5e-4, 1.5e-3, 3e-3, 6e-3)
OVERRIDES = ["data=stdlib", "data.seq_len=128", "train.steps=2000", "train.eval_every=500",
             "train.checkpoint_every=1000"]  # fmt: skip


def model(size: str, parametrization: str) -> str:
    """The ``bench_lm_grid`` model of a cell: the Tokenformer with its LMConfig settings."""
    attention, ffn = SIZES[size]
    settings = f"qkv_tokens={attention} proj_tokens={attention} ffn_tokens={ffn}"
    return f"tokenformer {settings}" + (" parametrization=mup" if parametrization == "mup" else "")


def run(csv_path: Path, lrs: list[float], seeds: list[int], models: list[str]) -> None:
    """The cells of ``lrs`` x ``seeds`` x ``models`` the CSV lacks (two at a time)."""
    bench_lm_grid.main(
        ["--overrides", *OVERRIDES, "--csv", str(csv_path), "--lrs", *map(str, lrs),
         "--seeds", *map(str, seeds), "--models", *models, "--report", "/dev/null",
         "--plot", "/dev/null"]
    )  # fmt: skip


def cells(csv_path: Path) -> dict[tuple[str, str, float], list[float]]:
    """(parametrization, size, lr) -> the final validation losses of its seeds."""
    names = {model(s, p): (p, s) for s in SIZES for p in PARAMETRIZATIONS}
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


def table(found: dict) -> str:
    best = best_rates(found)
    lines = ["| parametrization | tokens | " + " | ".join(f"lr {lr:g}" for lr in LRS)
             + " | best lr |", "|---|---|" + "---|" * (len(LRS) + 1)]  # fmt: skip
    for p in PARAMETRIZATIONS:
        for s, (attention, ffn) in SIZES.items():
            if (p, s) not in best:
                continue
            row = []
            for lr in LRS:
                losses = found.get((p, s, lr), [])
                text = f"{statistics.mean(losses):.3f}" if losses else "-"
                if len(losses) > 1:
                    text += f" ± {statistics.pstdev(losses):.3f} ({len(losses)})"
                row.append(f"**{text}**" if lr == best[(p, s)] else text)
            label = f"{s} ({attention}/{attention}/{ffn})"
            lines.append(f"| {p} | {label} | " + " | ".join(row) + f" | {best[(p, s)]:g} |")
    return "\n".join(lines)


def plot(found: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, p in zip(axes, PARAMETRIZATIONS, strict=True):
        for i, s in enumerate(SIZES):
            lrs = [lr for lr in LRS if (p, s, lr) in found]
            for lr in lrs:
                ax.scatter([lr] * len(found[(p, s, lr)]), found[(p, s, lr)], s=10, color=f"C{i}")
            means = [statistics.mean(found[(p, s, lr)]) for lr in lrs]
            ax.plot(lrs, means, marker="o", color=f"C{i}", label=f"{s} tokens")
            best = lrs[means.index(min(means))]
            ax.scatter([best], [min(means)], s=80, facecolors="none", edgecolors=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(LRS, [f"{lr:g}" for lr in LRS])
        ax.set_xlabel("lr")
        ax.set_title("the paper's parametrization" if p == "standard" else "μP", fontsize=9)
    axes[0].set_ylabel("final validation loss (nats/byte)")
    axes[0].legend(fontsize=8)
    fig.suptitle("language, 2000 steps: loss against lr per token count (circle: best)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--confirm-seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--csv", type=Path, default=DOCS / "lr_transfer_language.csv")
    parser.add_argument("--plot", type=Path, default=DOCS / "lr_transfer_language.png")
    parser.add_argument("--report-only", action="store_true", help="no runs: table and plot")
    args = parser.parse_args(argv)
    every = [model(s, p) for s in SIZES for p in PARAMETRIZATIONS]
    if not args.report_only:
        run(args.csv, list(LRS), args.seeds, every)
        for (p, s), lr in best_rates(cells(args.csv)).items():
            run(args.csv, [lr], args.confirm_seeds, [model(s, p)])
    found = cells(args.csv)
    plot(found, args.plot)
    print(table(found))


if __name__ == "__main__":
    main()
