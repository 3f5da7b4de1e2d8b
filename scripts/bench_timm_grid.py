"""Robustness under timm's own train.py: the image Tokenformer vs the matched ViT over a grid.

    python scripts/bench_timm_grid.py --train-py ../pytorch-image-models/train.py \\
        --lrs 1e-3 2e-3 4e-3 --warmups 1 5 --augs light timm --seeds 0 1 2 3 4

Every (model, lr, warm-up, augmentation, seed) is one unmodified train.py run on scikit-learn's
digits (an ImageFolder of 32x32 PNGs). Each finished run is appended to ``--csv`` at once, so a
stopped grid resumes where it was; the summary (mean, spread, dead starts: final top-1 below
``--dead-below``) goes to docs/benchmarks.md and a plot per grid to ``--plot``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import shlex
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import REPORT, record, run_in_parallel
from benchmarks.matched import (
    MATCHED_VIT_MICRO,
    MATCHED_VIT_MICRO_LAYERSCALE,
    VIT_LABELS,
    digits_image_folder,
)  # fmt: skip
from benchmarks.upstream import timm_train_command

DOCS = Path(__file__).resolve().parent.parent / "docs"
# timm's defaults (RandomResizedCrop scale 0.08-1, flips, colour jitter) against a light one:
# crops that keep most of the digit, no flips (a flipped digit is another digit), no jitter.
AUGS = {"timm": "", "light": "--scale 0.8 1 --ratio 0.9 1.1 --hflip 0 --color-jitter 0"}
FIELDS = ["model", "lr", "warmup", "aug", "seed", "final", "best", "top1_per_epoch", "seconds"]


def grid(args: argparse.Namespace) -> list[dict[str, object]]:
    cells = itertools.product(args.augs, args.warmups, args.lrs, args.seeds, args.variants)
    return [
        {"aug": aug, "warmup": warmup, "lr": lr, "seed": seed, "model": variant}
        for aug, warmup, lr, seed, variant in cells
    ]


def label(variant: str) -> str:
    return VIT_LABELS.get(variant, variant)


def key(run: dict[str, object]) -> tuple[str, ...]:
    return tuple(str(run[k]) for k in ("model", "lr", "warmup", "aug", "seed"))


def read_done(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def command(args: argparse.Namespace, run: dict[str, object], out: Path) -> list[str]:
    train_args = f"--warmup-epochs {run['warmup']} {AUGS[str(run['aug'])]} {args.train_args}"
    run_args = argparse.Namespace(
        train_py=args.train_py,
        data=args.data,
        lr=run["lr"],
        epochs=args.epochs,
        train_args=train_args,
    )
    return timm_train_command(run_args, str(run["model"]), int(run["seed"]), out)


def run_grid(args: argparse.Namespace) -> None:
    """Run what ``args.csv`` does not hold yet, a batch of ``args.jobs`` at a time."""
    done = {key(row) for row in read_done(args.csv)}
    pending = [run for run in grid(args) if key(run) not in done]
    new_file = not args.csv.is_file()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        args.data = digits_image_folder(Path(tmp) / "digits")
        for start in range(0, len(pending), args.jobs):
            batch = pending[start : start + args.jobs]
            outs = [Path(tmp) / f"run{start + i}" for i in range(len(batch))]
            commands = [command(args, run, out) for run, out in zip(batch, outs, strict=True)]
            logs = [out.with_suffix(".log") for out in outs]
            desc = f"runs {start + 1}-{start + len(batch)} of {len(pending)}"
            seconds = run_in_parallel(commands, logs, args.jobs, desc)
            for run, out, sec in zip(batch, outs, seconds, strict=True):
                with (out / "run" / "summary.csv").open() as summary:
                    top1 = [float(row["eval_top1"]) for row in csv.DictReader(summary)]
                writer.writerow(
                    {**run, "final": f"{top1[-1]:.2f}", "best": f"{max(top1):.2f}",
                     "top1_per_epoch": " ".join(f"{t:.1f}" for t in top1),
                     "seconds": f"{sec:.0f}"}
                )  # fmt: skip
            f.flush()


def summarise(rows: list[dict[str, str]], dead_below: float) -> list[dict[str, object]]:
    """One row per (aug, warm-up, lr, model): mean, std, min, max and dead starts of final top-1."""
    cells: dict[tuple[str, ...], list[float]] = {}
    for row in rows:
        cell = (row["aug"], row["warmup"], row["lr"], row["model"])
        cells.setdefault(cell, []).append(float(row["final"]))
    table = []
    for (aug, warmup, lr, model), finals in sorted(cells.items()):
        dead = sum(f < dead_below for f in finals)
        table.append(
            {"augmentation": aug, "warm-up epochs": warmup, "lr": lr, "model": label(model),
             "seeds": len(finals), "mean top-1": f"{np.mean(finals):.1f}",
             "std": f"{np.std(finals):.1f}", "min": f"{min(finals):.1f}",
             "max": f"{max(finals):.1f}", "dead starts": dead}
        )  # fmt: skip
    return table


def plot(rows: list[dict[str, str]], path: Path, dead_below: float) -> None:
    """A panel per (augmentation, warm-up): final top-1 of every seed against lr, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["aug"], r["warmup"]) for r in rows})
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (aug, warmup) in zip(axes[0], panels, strict=True):
        for i, model in enumerate(models):
            mine = [r for r in rows if (r["aug"], r["warmup"], r["model"]) == (aug, warmup, model)]
            lrs = sorted({float(r["lr"]) for r in mine})
            offset = (i - (len(models) - 1) / 2) * 0.06
            xs = [np.log2(float(r["lr"])) + offset for r in mine]
            ax.scatter(xs, [float(r["final"]) for r in mine], s=14, alpha=0.7,
                       label=label(model), color=f"C{i}")  # fmt: skip
            means = [
                np.mean([float(r["final"]) for r in mine if float(r["lr"]) == lr]) for lr in lrs
            ]
            ax.plot(np.log2(lrs) + offset, means, color=f"C{i}")
        ax.axhline(dead_below, color="grey", linestyle=":", linewidth=1)
        lrs = sorted({float(r["lr"]) for r in rows})
        ax.set_xticks(np.log2(lrs), [f"{lr:g}" for lr in lrs])
        ax.set_xlim(np.log2(lrs[0]) - 0.5, np.log2(lrs[-1]) + 0.5)
        ax.set_title(f"{aug} augmentation, {warmup} warm-up epoch(s)", fontsize=9)
        ax.set_xlabel("lr")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("final validation top-1 %")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-py", type=Path, required=True, help="timm's train.py")
    parser.add_argument(
        "--variants", nargs="+",
        default=["tokenformer_micro_patch4_32", MATCHED_VIT_MICRO_LAYERSCALE, MATCHED_VIT_MICRO],
        help='"model key=value ..." (the values go to --model-kwargs)',
    )  # fmt: skip
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    parser.add_argument("--warmups", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--augs", nargs="+", choices=sorted(AUGS), default=["light", "timm"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-args", default="", help="more train.py arguments, every run")
    parser.add_argument(
        "--dead-below", type=float, default=30.0, help="final top-1 %% of a dead start"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--csv", type=Path, default=DOCS / "robustness_vision.csv")
    parser.add_argument("--plot", type=Path, default=DOCS / "robustness_vision.png")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--no-report", action="store_true", help="run only; no table or plot")
    parser.add_argument(
        "--report-only", action="store_true", help="no runs: the table and plot of what is done"
    )
    args = parser.parse_args(argv)
    if not args.report_only and not args.train_py.is_file():
        raise SystemExit(
            f"no timm train.py at {args.train_py}: pass --train-py, the train.py of a "
            "pytorch-image-models checkout"
        )
    if not args.report_only:
        run_grid(args)
    if args.no_report:
        return
    wanted = {key(run) for run in grid(args)}
    rows = [row for row in read_done(args.csv) if key(row) in wanted]
    plot(rows, args.plot, args.dead_below)
    record(
        "Robustness under timm's own train.py: Tokenformer vs the matched ViT",
        summarise(rows, args.dead_below),
        notes=(
            "timm's train.py unmodified (`python -m tokenformer_mm <train.py> --model ...`) on the "
            "digits as an ImageFolder of 32x32 PNGs (1,437 train / 360 val), AdamW, batch 32, "
            f"{args.epochs} epochs, cosine, timm's per-epoch warm-up from lr 1e-5 (1 warm-up "
            "epoch: the first epoch at 1e-5, then the full lr at once), weight decay 2e-5, label "
            f"smoothing 0.1. Augmentation `timm`: its defaults; `light`: `{AUGS['light']}`. "
            "Final validation top-1 %, population std over seeds (ddof 0); a dead start ends below "
            f"{args.dead_below:g} % (chance is 10 %). Every run: `{args.csv.name}`; "
            f"plot: `{args.plot.name}`"
            + (f"; extra: `{shlex.quote(args.train_args)}`" if args.train_args else "")
            + "."
        ),
        report=args.report,
    )


if __name__ == "__main__":
    main()
