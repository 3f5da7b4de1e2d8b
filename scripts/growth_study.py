"""Progressive scaling, measured: does growing a Tokenformer save compute? (configs/study/)

    python scripts/growth_study.py                 # both towers, 3 seeds: docs/growth.md + plots
    python scripts/growth_study.py --quick         # a one-minute smoke version (the test suite's)
    python scripts/growth_study.py seeds=[0] towers=[language]   # Hydra overrides of the study

For each tower on its embedded data set: (a) a small model from scratch; (b) (a) grown x2 in
parameter tokens with ``init="exact"`` and trained on; (c) the same with ``init="official"``;
(d) the grown size from scratch, trained longer. Every run goes through the shared engine;
compute is its training FLOPs (``tokenformer_mm.flops``), and (b), (c) include (a)'s.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from tokenformer_mm.train import Trainer, build_task, register_schemas

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("small", "exact", "official", "scratch")
LABELS = {
    "small": "(a) small, from scratch",
    "exact": "(b) (a) grown x2, exact",
    "official": "(c) (a) grown x2, official",
    "scratch": "(d) grown size, from scratch",
}


def run_arm(tower: Any, arm: str, seed: int, work_dir: Path, small_ckpt: str | None) -> dict:
    """Train one arm; returns its evaluation curve [(cumulative FLOPs, metrics)] and checkpoint."""
    size = tower.small if arm == "small" else tower.big
    steps = {"small": tower.small_steps, "scratch": tower.scratch_steps}.get(arm, tower.grown_steps)
    run_dir = work_dir / f"{arm}-seed{seed}"
    overrides = [
        *tower.common,
        *size,
        f"train.steps={steps}",
        f"train.eval_every={tower.eval_every}",
        f"train.checkpoint_every={steps}",
        f"seed={seed}",
        f"run_dir={run_dir}",
    ]
    if arm in ("exact", "official"):
        overrides += [f"+growth.init_from={small_ckpt}", f"growth.init={arm}"]
    cfg = compose(tower.config, overrides=overrides)
    trainer = Trainer(cfg, build_task(cfg), run_dir)
    start = trainer.task.evaluate(trainer.model, trainer.eval_loader)
    summary = trainer.fit()
    curve = [(0, start)] + [
        (row["flops"], {k: v for k, v in row.items() if k.startswith("val/")})
        for row in trainer.eval_rows
    ]
    return {"curve": curve, "checkpoint": summary["checkpoint"], "flops": trainer.total_flops}


def run_tower(study: Any, name: str) -> dict[int, dict[str, dict]]:
    tower, results = study[name], {}
    for seed in study.seeds:
        work_dir = ROOT / study.work_dir / name
        runs = {"small": run_arm(tower, "small", seed, work_dir, None)}
        for arm in ("exact", "official"):
            runs[arm] = run_arm(tower, arm, seed, work_dir, runs["small"]["checkpoint"])
            offset = runs["small"]["flops"]  # growing starts from the small model's compute
            runs[arm]["curve"] = [(f + offset, m) for f, m in runs[arm]["curve"]]
            runs[arm]["flops"] += offset
        runs["scratch"] = run_arm(tower, "scratch", seed, work_dir, None)
        results[seed] = runs
    return results


def flops_to_reach(curve: list[tuple[float, dict]], loss: float) -> float | None:
    """Cumulative FLOPs at the first evaluation whose validation loss is at most ``loss``."""
    return next((flops for flops, m in curve if m["val/loss"] <= loss), None)


def final_loss(run: dict) -> float:
    return run["curve"][-1][1]["val/loss"]


def summarize(results: dict[int, dict[str, dict]]) -> list[dict[str, str]]:
    """One table row per arm: mean ± spread over seeds of the final metrics and compute."""

    def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
        values = [v / scale for v in values]
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    rows = []
    for arm in ARMS:
        runs = [results[s][arm] for s in results]
        finals = [r["curve"][-1][1] for r in runs]
        row = {
            "arm": LABELS[arm],
            "final val loss": fmt([f["val/loss"] for f in finals]),
            "cumulative TFLOPs": fmt([r["flops"] for r in runs], 1e12, 2),
        }
        if "val/top1" in finals[0]:
            row["final val top-1 %"] = fmt([f["val/top1"] for f in finals], digits=1)
        if arm in ("exact", "official"):
            reach = [
                flops_to_reach(results[s][arm]["curve"], final_loss(results[s]["scratch"]))
                for s in results
            ]
            done = [r for r in reach if r is not None]
            scratch = [results[s]["scratch"]["flops"] for s in results]
            row["TFLOPs to reach (d)'s final loss"] = (
                f"{fmt(done, 1e12, 2)} ({len(done)}/{len(reach)} seeds)" if done else "not reached"
            )
            row["ratio to (d)"] = (
                fmt([r / d for r, d in zip(reach, scratch, strict=True) if r is not None], digits=2)
                if done
                else "—"
            )
        rows.append(row)
    return rows


def plot(results: dict[int, dict[str, dict]], tower: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "small": "tab:blue",
        "exact": "tab:green",
        "official": "tab:orange",
        "scratch": "tab:red",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seed, runs in results.items():
        for arm, run in runs.items():
            flops = [f / 1e12 for f, _ in run["curve"]]
            loss = [m["val/loss"] for _, m in run["curve"]]
            first = seed == min(results)
            label = LABELS[arm] if first else None
            ax.plot(flops, loss, ".-", color=colors[arm], alpha=0.9 if first else 0.35, label=label)
    ax.set_xlabel("cumulative training TFLOPs")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{tower}: growth vs training from scratch ({len(results)} seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict[str, str]]) -> str:
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(h, "") for h in header) + " |" for row in rows]
    return "\n".join(lines)


def write_report(study: Any, results: dict[str, dict], command: str) -> Path:
    report = ROOT / study.report
    sections = []
    for tower, tower_results in results.items():
        image = report.parent / f"growth_{tower}.png"
        plot(tower_results, tower, image)
        sections.append(
            f"## {tower}\n\n{table(summarize(tower_results))}\n\n![{tower}]({image.name})\n"
        )
    header = (
        "# Growth, measured\n\n"
        f"- command: `{command}`\n- date: {datetime.date.today().isoformat()}\n"
        f"- seeds: {list(study.seeds)}; settings: `configs/study/growth.yaml`\n\n"
    )
    report.write_text(header + "\n".join(sections))
    return report


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the one-minute smoke version")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study config")
    args = parser.parse_args(argv)
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        study = compose("study/growth_quick" if args.quick else "study/growth", args.overrides)
        results = {tower: run_tower(study, tower) for tower in study.towers}
    if study.report:
        command = "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]
        )
        print(f"wrote {write_report(study, results, command)}")
    return results


if __name__ == "__main__":
    main()
