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
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from growth_report import ROOT, SIZES, arm_result, best_arm, write_report
from hydra import compose, initialize_config_dir
from tqdm import tqdm

from tokenformer_mm.checkpoint_layout import CHECKPOINTS_DIR, newest_checkpoint, step_dir_name
from tokenformer_mm.train import Trainer, build_task, register_schemas


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``scripts/train.py`` run of the study and the runs whose checkpoints it starts from."""

    name: str  # its directory under the tower's work dir
    steps: int
    overrides: tuple[str, ...]
    after: tuple[str, ...] = ()


def _ckpt(work_dir: Path, run: str, step: int) -> Path:
    return work_dir / run / CHECKPOINTS_DIR / step_dir_name(step)


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
    latest = newest_checkpoint(run_dir)
    return latest is not None and latest.name == step_dir_name(steps)


def execute(config: str, run: Run, work_dir: Path, threads: int | None) -> None:
    """Train ``run`` (resuming it if a previous study was killed mid-run)."""
    run_dir = work_dir / run.name
    overrides = [*run.overrides]
    if newest_checkpoint(run_dir) is not None:
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


# --- the report -----------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
