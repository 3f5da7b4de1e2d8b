"""The growth study's analysis and report: frontiers, each arm's speed-up, tables, plots and
the generated part of docs/growth.md (``scripts/growth_study.py`` runs the study)."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenformer_mm.train.metric_log import GROWTH_FILE, METRICS_FILE, read_csv

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("small", "big")  # the two scratch frontiers of a tower

# The report's generated part; text outside these markers (the reading, the recipe) is kept.
BEGIN, END = "<!-- growth_study.py: begin -->", "<!-- growth_study.py: end -->"


def read_run(run_dir: Path) -> dict[str, Any]:
    """A finished run: its annealed end point, its evaluations and its growth events."""
    rows = read_csv(run_dir / METRICS_FILE)
    growth = run_dir / GROWTH_FILE
    events = (
        [json.loads(line) for line in growth.read_text().splitlines()] if growth.exists() else []
    )
    return {
        "flops": float(rows[-1]["flops"]),
        "loss": float(rows[-1]["val/loss"]),
        "top1": float(rows[-1]["val/top1"]) if "val/top1" in rows[-1] else None,
        "curve": [(float(r["flops"]), float(r["val/loss"])) for r in rows],
        "growth": events,
    }


def flops_at_step(run_dir: Path, step: int) -> float:
    row = next(r for r in read_csv(run_dir / METRICS_FILE) if int(r["step"]) == step)
    return float(row["flops"])


def interpolate(points: Sequence[tuple[float, float]], flops: float) -> float:
    """The loss of a frontier at ``flops``: linear in log FLOPs between its annealed points;
    ``nan`` outside them (no extrapolation)."""
    for (f0, l0), (f1, l1) in itertools.pairwise(sorted(points)):
        if f0 <= flops <= f1:
            return l0 + (math.log(flops / f0)) / math.log(f1 / f0) * (l1 - l0)
    return math.nan


def flops_to_reach(points: Sequence[tuple[float, float]], loss: float) -> float:
    """The FLOPs at which annealed ``points`` first reach ``loss`` (linear in log FLOPs from the
    point before; the first point's FLOPs if it is already there); ``nan`` if none does."""
    previous = None
    for flops, value in sorted(points):
        if value <= loss:
            if previous is None:
                return flops
            f0, l0 = previous
            return math.exp(math.log(f0) + (l0 - loss) / (l0 - value) * math.log(flops / f0))
        previous = (flops, value)
    return math.nan


def frontier(tower: Any, work_dir: Path, size: str, seed: int) -> list[tuple[float, float]]:
    return [
        (r["flops"], r["loss"])
        for b in sorted(tower.budgets)
        for r in [read_run(work_dir / f"{size}-seed{seed}/b{b}")]
    ]


def best_scratch(tower: Any, work_dir: Path, seed: int, flops: float) -> float:
    """The lowest loss any scratch model reaches within ``flops``: each size's frontier between
    its budgets, and its largest budget's model for any compute beyond it (one stops there)."""
    candidates = []
    for size in SIZES:
        points = frontier(tower, work_dir, size, seed)
        candidates += [interpolate(points, flops)] + [loss for f, loss in points if f <= flops]
    return min((loss for loss in candidates if not math.isnan(loss)), default=math.nan)


def arm_result(tower: Any, work_dir: Path, arm: str, step: int, seed: int) -> dict[str, Any]:
    """An arm's annealed points and what they save against the big frontier (same seed)."""
    prefix = work_dir / f"{arm}@{step}-seed{seed}"
    budgets = [b for b in sorted(tower.budgets) if (prefix / f"b{b}").is_dir()]
    points = [(run["flops"], run["loss"]) for run in (read_run(prefix / f"b{b}") for b in budgets)]
    small = work_dir / f"small-seed{seed}/b{max(tower.budgets)}"
    given = flops_at_step(small, step)  # the small model's compute up to the grow step
    big = frontier(tower, work_dir, "big", seed)
    target_flops, target = big[-1]  # the big model's loss at its largest budget
    main = read_run(prefix / f"b{max(tower.budgets)}")
    (event,) = main["growth"]
    reach = flops_to_reach(points, target)
    final_flops, final_loss = points[-1]
    return {
        "arm": arm,
        "step": step,
        "seed": seed,
        "points": points,
        "curve": main["curve"],
        "growth_delta": event["val_after"]["val/loss"] - event["val_before"]["val/loss"],
        "given": given,
        "final_loss": final_loss,
        "frontier_loss_at_equal_flops": interpolate(big, final_flops),
        "envelope_loss_at_equal_flops": best_scratch(tower, work_dir, seed, final_flops),
        "reach": reach,
        "sp_cumulative": target_flops / reach - 1,
        "sp_family": target_flops / (reach - given) - 1,
    }


def fmt(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    values = [v / scale for v in values if not math.isnan(v)]
    if not values:
        return "not reached"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def reached(values: Sequence[float], digits: int, scale: float = 1.0) -> str:
    """``fmt`` of the seeds that reached the target, saying how many did when not all."""
    done = sum(not math.isnan(v) for v in values)
    text = fmt(values, digits, scale)
    return text if done in (0, len(values)) else f"{text} ({done} of {len(values)} seeds)"


def table(rows: list[dict[str, str]]) -> str:
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(h, "") for h in header) + " |" for row in rows]
    return "\n".join(lines)


def frontier_table(tower: Any, work_dir: Path, seeds: Sequence[int]) -> str:
    rows = []
    for size in SIZES:
        for index, budget in enumerate(sorted(tower.budgets)):
            per_seed = [frontier(tower, work_dir, size, s)[index] for s in seeds]
            rows.append(
                {
                    "size": size,
                    "budget (steps)": str(budget),
                    "TFLOPs": fmt([f for f, _ in per_seed], 3, 1e12),
                    f"val loss ({len(seeds)} seeds)": fmt([loss for _, loss in per_seed]),
                }
            )
    return table(rows)


def arm_table(results: Sequence[Sequence[dict[str, Any]]]) -> str:
    """One row per arm: each a list of per-seed results."""
    rows = []
    for per_seed in results:
        first = per_seed[0]
        rows.append(
            {
                "arm": f"{first['arm']} @ step {first['step']}",
                "seeds": str(len(per_seed)),
                "loss change at growth": fmt(
                    [r["growth_delta"] for r in per_seed],
                    2 if first["arm"].endswith(("official", "stack")) else 7,
                ),
                "final val loss": fmt([r["final_loss"] for r in per_seed]),
                "big frontier at equal FLOPs": fmt(
                    [r["frontier_loss_at_equal_flops"] for r in per_seed]
                ),
                "best scratch (either size) at equal FLOPs": fmt(
                    [r["envelope_loss_at_equal_flops"] for r in per_seed]
                ),
                "arm - big frontier at equal FLOPs (paired)": fmt(
                    [r["final_loss"] - r["frontier_loss_at_equal_flops"] for r in per_seed]
                ),
                "TFLOPs to the big frontier's best loss": reached(
                    [r["reach"] for r in per_seed], 2, 1e12
                ),
                "sp, cumulative": reached([r["sp_cumulative"] for r in per_seed], 2),
                "sp, model-family": reached([r["sp_family"] for r in per_seed], 2),
            }
        )
    return table(rows)


def plot(tower_name: str, tower: Any, work_dir: Path, results: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for size, color in zip(SIZES, ("tab:blue", "tab:red"), strict=True):
        points = frontier(tower, work_dir, size, 0)
        ax.plot(
            [f / 1e12 for f, _ in points], [loss for _, loss in points], "o-", color=color,
            lw=2.5, label=f"{size} from scratch (frontier)",
        )  # fmt: skip
    for index, result in enumerate(results):
        color = plt.cm.tab10((index + 2) % 10)
        label = f"{result['arm']} @ {result['step']}"
        flops, losses = zip(*result["curve"], strict=True)
        ax.plot([f / 1e12 for f in flops], losses, ":", color=color, alpha=0.6)
        ax.plot(
            [f / 1e12 for f, _ in result["points"]], [loss for _, loss in result["points"]],
            "s--", color=color, label=label,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training TFLOPs (log)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{tower_name}: growth arms (squares: annealed; dotted: stable phase) vs scratch")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_arm(results: Sequence[dict[str, Any]]) -> tuple[str, int]:
    """The arm with the largest cumulative speed-up; by final loss at equal FLOPs if none reach."""

    def key(r: dict[str, Any]) -> tuple[float, float]:
        sp = r["sp_cumulative"]
        return (
            -math.inf if math.isnan(sp) else sp,
            r["frontier_loss_at_equal_flops"] - r["final_loss"],
        )

    best = max(results, key=key)
    return best["arm"], best["step"]


def write_report(study: Any, results: dict[str, dict[str, Any]], command: str) -> Path:
    report = Path(study.report)
    report = report if report.is_absolute() else ROOT / report
    sections = []
    for name, result in results.items():
        image = report.parent / f"growth_{name}.png"
        plot(name, result["tower"], result["work_dir"], result["screen"], image)
        best = result["best"][0]
        sections.append(
            f"### {name}\n\n#### Scratch frontier\n\n"
            f"{frontier_table(result['tower'], result['work_dir'], result['seeds'])}\n\n"
            f"#### Every arm, seed {study.seeds[0]}\n\n"
            f"{arm_table([[r] for r in result['screen']])}\n\n"
            f"#### The best arm, {len(result['seeds'])} seeds\n\n"
            f"{arm_table([result['best']])}\n\n"
            f"![{name}]({image.name})\n\n"
            f"(best: {best['arm']} @ {best['step']})\n"
        )
    header = (
        "## The study's output\n\n"
        f"- command: `{command}`\n- date: {datetime.date.today().isoformat()}\n"
        "- settings: `configs/study/growth.yaml`\n"
        "- sp = FLOPs the big frontier needs for its largest-budget loss / FLOPs the arm needs "
        "for it - 1 (cumulative: all the arm's FLOPs; model-family: less the small model's "
        "FLOPs up to the grow step)\n\n"
    )
    generated = f"{BEGIN}\n{header}" + "\n".join(sections) + f"\n{END}\n"
    text = report.read_text() if report.exists() else ""
    if BEGIN in text and END in text:  # keep what was written by hand around the tables
        before, rest = text.split(BEGIN, 1)
        generated = before + generated + rest.split(END, 1)[1].lstrip("\n")
    report.write_text(generated)
    return report
