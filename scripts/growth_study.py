"""Does growing a Tokenformer save compute? Measured against a scratch frontier (configs/study/).

    python scripts/growth_study.py                    # both towers: docs/growth.md + plots
    python scripts/growth_study.py --quick            # the test suite's version, in-process
    python scripts/growth_study.py towers=[language] workers=2   # Hydra overrides of the study

Per tower: the small and the big model trained from scratch with warmup-stable-decay and a
cooldown branch at every budget (the *frontier*: annealed models, loss against training FLOPs),
and growth arms: the small model's stable run grown at a step (width, depth; exact, official,
perturbed, stacked), continued and cooled down at the same budgets. Every run is
``scripts/train.py`` (or the same engine in-process with ``workers=0``); a run that finished is
not run again, one that was killed resumes, so the study continues where it stopped.

Two accountings of an arm's compute: *cumulative* (the small model's FLOPs count) and
*model-family* (the small model up to the grow step is given, as for a user who owns it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from tqdm import tqdm

from tokenformer_mm.train import Trainer, build_task, checkpoint, register_schemas
from tokenformer_mm.train.metric_log import GROWTH_FILE, METRICS_FILE, read_csv

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("small", "big")
# The report's generated part; text outside these markers (the reading, the recipe) is kept.
BEGIN, END = "<!-- growth_study.py: begin -->", "<!-- growth_study.py: end -->"


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``scripts/train.py`` run of the study and the runs whose checkpoints it starts from."""

    name: str  # its directory under the tower's work dir
    steps: int
    overrides: tuple[str, ...]
    after: tuple[str, ...] = ()


def _ckpt(work_dir: Path, run: str, step: int) -> Path:
    return work_dir / run / "checkpoints" / f"step_{step:08d}"


def _schedule(tower: Any, steps: int, run_dir: Path, seed: int) -> list[str]:
    decay = round(steps * tower.decay_fraction)
    return [
        *tower.common,
        f"train.steps={steps}",
        f"optim.decay_steps={decay}",
        f"train.eval_every={tower.eval_every}",
        f"train.checkpoint_every={tower.eval_every}",
        "train.keep_checkpoints=1000",
        f"seed={seed}",
        f"run_dir={run_dir}",
    ]


def branch_point(tower: Any, budget: int) -> int:
    """The stable-phase step a budget's cooldown starts from (a multiple of ``eval_every``)."""
    point = budget - round(budget * tower.decay_fraction)
    if point % tower.eval_every:
        raise ValueError(
            f"budget {budget} decays from step {point}, which is not a checkpoint step (a multiple "
            f"of eval_every={tower.eval_every}); choose budgets and decay_fraction to match"
        )
    return point


def plan_size(tower: Any, size: str, seed: int, work_dir: Path) -> list[Run]:
    """A frontier: one stable run to the largest budget and a cooldown branch for each other."""
    longest, runs = max(tower.budgets), []
    main = f"{size}-seed{seed}/b{longest}"
    runs.append(
        Run(main, longest, (*tower[size], *_schedule(tower, longest, work_dir / main, seed)))
    )
    for budget in sorted(tower.budgets)[:-1]:
        name = f"{size}-seed{seed}/b{budget}"
        start = _ckpt(work_dir, main, branch_point(tower, budget))
        overrides = (*tower[size], *_schedule(tower, budget, work_dir / name, seed))
        runs.append(Run(name, budget, (*overrides, f"train.branch_from={start}"), (main,)))
    return runs


def arm_overrides(arm: Any, step: int) -> list[str]:
    event = f"{{step: {step}, factor: {arm.get('factor', 1)}, depth: {arm.get('depth', 1)}}}"
    return [
        f"growth.schedule=[{event}]",
        f"growth.init={arm.get('init', 'exact')}",
        f"growth.depth_init={arm.get('depth_init', 'exact')}",
    ]


def plan_arm(tower: Any, arm_name: str, step: int, seed: int, work_dir: Path) -> list[Run]:
    """The small model's stable run grown at ``step``, continued to every budget after it."""
    arm, longest = tower.arms[arm_name], max(tower.budgets)
    small = f"small-seed{seed}/b{longest}"
    prefix = f"{arm_name}@{step}-seed{seed}"
    grow = (*tower.small, *arm_overrides(arm, step))
    main = f"{prefix}/b{longest}"
    start = _ckpt(work_dir, small, step)
    overrides = (*grow, *_schedule(tower, longest, work_dir / main, seed))
    runs = [Run(main, longest, (*overrides, f"train.branch_from={start}"), (small,))]
    for budget in sorted(tower.budgets)[:-1]:
        point = branch_point(tower, budget)
        if point < step:
            continue  # the grown model would start in this budget's decay
        name = f"{prefix}/b{budget}"
        # At the grow step itself the branch grows too; later it continues the grown run.
        source, after = (small, (small,)) if point == step else (main, (main,))
        overrides = (*grow, *_schedule(tower, budget, work_dir / name, seed))
        start = _ckpt(work_dir, source, point)
        runs.append(Run(name, budget, (*overrides, f"train.branch_from={start}"), after))
    return runs


def arm_points(tower: Any) -> list[tuple[str, int]]:
    return [(name, step) for name, arm in tower.arms.items() for step in arm.at]


# --- running ------------------------------------------------------------------------------------


def is_done(run_dir: Path, steps: int) -> bool:
    latest = checkpoint.latest(run_dir / "checkpoints")
    return latest is not None and latest.name == f"step_{steps:08d}"


def execute(config: str, run: Run, work_dir: Path, threads: int | None) -> None:
    """Train ``run`` (resuming it if a previous study was killed mid-run)."""
    run_dir = work_dir / run.name
    overrides = [*run.overrides]
    if checkpoint.latest(run_dir / "checkpoints") is not None:
        overrides = [o for o in overrides if not o.startswith("train.branch_from=")]
        overrides.append("resume=true")
    if threads is None:  # in this process
        register_schemas()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config, overrides=overrides)
        Trainer(cfg, build_task(cfg), run_dir).fit()
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config-name", config]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(run_dir / "study.log", "a") as log:
        result = subprocess.run(
            [*command, *overrides], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        raise RuntimeError(f"{run.name} failed (rc {result.returncode}); see {run_dir}/study.log")


def run_all(config: str, runs: Sequence[Run], work_dir: Path, workers: int) -> None:
    """Run every run not yet finished, each once what it starts from has finished."""
    pending = {r.name: r for r in runs if not is_done(work_dir / r.name, r.steps)}
    finished = {r.name for r in runs} - set(pending)
    progress = tqdm(total=len(runs), initial=len(finished), unit="run", desc=f"{config} runs")
    if workers == 0:
        while pending:
            run = next(r for r in pending.values() if set(r.after) <= finished)
            execute(config, run, work_dir, None)
            finished.add(pending.pop(run.name).name)
            progress.update(1)
        progress.close()
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        active: dict[concurrent.futures.Future, str] = {}
        while pending or active:
            for run in [r for r in pending.values() if set(r.after) <= finished]:
                if len(active) >= workers:
                    break
                active[pool.submit(execute, config, run, work_dir, threads)] = run.name
                del pending[run.name]
            done, _ = concurrent.futures.wait(active, return_when="FIRST_COMPLETED")
            for future in done:
                future.result()
                finished.add(active.pop(future))
                progress.update(1)
    progress.close()


# --- reading the results --------------------------------------------------------------------


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


# --- the report -----------------------------------------------------------------------------


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


def study_tower(study: Any, name: str) -> dict[str, Any]:
    """Screen every arm on ``seeds``, then the best arm and the frontiers on ``confirm_seeds``."""
    tower = study[name]
    work_dir = Path(study.work_dir) / name
    if not work_dir.is_absolute():
        work_dir = ROOT / work_dir
    seed = study.seeds[0]
    screen = [r for size in SIZES for r in plan_size(tower, size, seed, work_dir)]
    screen += [r for a, s in arm_points(tower) for r in plan_arm(tower, a, s, seed, work_dir)]
    run_all(tower.config, screen, work_dir, study.workers)
    screened = [arm_result(tower, work_dir, a, s, seed) for a, s in arm_points(tower)]
    arm, step = best_arm(screened)
    confirm = []
    for extra in study.confirm_seeds:
        confirm += [r for size in SIZES for r in plan_size(tower, size, extra, work_dir)]
        confirm += plan_arm(tower, arm, step, extra, work_dir)
    run_all(tower.config, confirm, work_dir, study.workers)
    seeds = [seed, *study.confirm_seeds]
    confirmed = [arm_result(tower, work_dir, arm, step, s) for s in seeds]
    return {
        "tower": tower,
        "work_dir": work_dir,
        "screen": screened,
        "best": confirmed,
        "seeds": seeds,
    }


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


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the test suite's version")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study config")
    args = parser.parse_args(argv)
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        study = compose("study/growth_quick" if args.quick else "study/growth", args.overrides)
    results = {name: study_tower(study, name) for name in study.towers}
    if study.report:
        command = "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
        )
        print(f"wrote {write_report(study, results, command)}")
    return results


if __name__ == "__main__":
    main()
