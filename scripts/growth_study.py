"""Does growing a Tokenformer save compute? Measured against a scratch frontier (configs/study/).

    python scripts/growth_study.py                    # run what docs/growth_<tower>.csv lacks
    python scripts/growth_study.py --report-only      # docs/growth.md from the CSV, no training
    python scripts/growth_study.py --quick            # the test suite's version, in-process
    python scripts/growth_study.py workers=1 work_dir=/scratch/study   # Hydra overrides

Per tower: the small and the big model trained from scratch with warmup-stable-decay and a
cooldown branch at every budget (the *frontier*: annealed models, loss against training FLOPs),
and growth arms: the small model's stable run grown at a step, or at several (progressive),
continued and cooled down at the same budgets. Every run is ``scripts/train.py`` (or the same
engine in-process with ``workers=0``) in the study's work directory (default: under the user's
cache, outside any work tree); a killed run resumes from its last checkpoint.

Each finished run's evaluations and growth events are appended to the tower's results CSV
(``docs/growth_<tower>.csv``) as it ends, keyed by the run's name and a signature of its
settings: commit it, and a study started on a fresh machine runs only what no row covers (and
the runs whose checkpoints those start from). The report reads the CSV alone.

Two accountings of an arm's compute: *cumulative* (the small model's FLOPs count) and
*model-family* (the small model up to the grow step is given, as for a user who owns it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import growth_report
from growth_report import ROOT, SIZES, arm_name, arm_result, best_arm, read_results
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
        f"train.checkpoint_every={tower.checkpoint_every}",
        "train.keep_checkpoints=1000",
        f"seed={seed}",
        f"run_dir={run_dir}",
    ]


def checkpoint_step(tower: Any, step: int, what: str) -> int:
    """``step``, which a run starts from, checked to be one of the stable runs' checkpoints."""
    if step % tower.checkpoint_every:
        raise ValueError(
            f"{what} is step {step}, which is not a checkpoint step (a multiple of "
            f"checkpoint_every={tower.checkpoint_every}); choose the steps to match"
        )
    return step


def branch_point(tower: Any, budget: int) -> int:
    """The stable-phase step a budget's cooldown starts from (a checkpoint step)."""
    point = budget - round(budget * tower.decay_fraction)
    return checkpoint_step(tower, point, f"budget {budget}'s cooldown start")


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


def grow_points(arm: Any) -> list[tuple[int, ...]]:
    """An arm's grow points: each entry of ``at`` is a step, or a list of steps (progressive
    growth: the arm's event at each)."""
    return [tuple(at) if isinstance(at, Sequence) else (at,) for at in arm.at]


def arm_overrides(arm: Any, steps: Sequence[int]) -> list[str]:
    """The growth settings of an arm grown at ``steps`` (one event at each)."""
    ramp = f", tau_ramp: {arm.tau_ramp}" if arm.get("tau_ramp") else ""  # older rows' settings
    events = ", ".join(
        f"{{step: {step}, factor: {arm.get('factor', 1)}, depth: {arm.get('depth', 1)}, "
        f"lr_scale: {arm.get('lr_scale', 1.0)}{ramp}}}"
        for step in steps
    )
    return [
        f"growth.schedule=[{events}]",
        f"growth.init={arm.get('init', 'exact')}",
        f"growth.depth_init={arm.get('depth_init', 'exact')}",
    ]


def plan_arm(tower: Any, arm: str, steps: Sequence[int], seed: int, work_dir: Path) -> list[Run]:
    """The small model's stable run grown at ``steps``, continued to every budget after the
    first: a budget whose cooldown starts at a grow point grows there; events after its
    cooldown's start are left out of it (a model grows in its stable phase only)."""
    spec, longest = tower.arms[arm], max(tower.budgets)
    for step in steps:
        checkpoint_step(tower, step, f"arm {arm}'s grow point")
    small = f"small-seed{seed}/b{longest}"
    prefix = f"{arm_name(arm, steps)}-seed{seed}"
    main = f"{prefix}/b{longest}"
    overrides = (*tower.small, *arm_overrides(spec, steps))
    overrides += (*_schedule(tower, longest, work_dir / main, seed),)
    start = _ckpt(work_dir, small, steps[0])
    runs = [Run(main, longest, (*overrides, f"train.branch_from={start}"), (small,))]
    for budget in sorted(tower.budgets)[:-1]:
        point = branch_point(tower, budget)
        if point < steps[0]:
            continue  # the grown model would start in this budget's decay
        name = f"{prefix}/b{budget}"
        # At the first grow point the branch grows from the small run; later it continues the
        # grown run (growing again at a later grow point that is its cooldown's start).
        source = small if point == steps[0] else main
        grow = arm_overrides(spec, [step for step in steps if step <= point])
        overrides = (*tower.small, *grow, *_schedule(tower, budget, work_dir / name, seed))
        start = _ckpt(work_dir, source, point)
        runs.append(Run(name, budget, (*overrides, f"train.branch_from={start}"), (source,)))
    return runs


def arm_points(tower: Any) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, steps) for name, arm in tower.arms.items() for steps in grow_points(arm)]


def signature(config: str, run: Run, work_dir: Path) -> str:
    """What a run's results depend on: its job and settings, paths relative to the work dir."""
    text = "\n".join([config, *(o.replace(str(work_dir), "<work>") for o in run.overrides)])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# --- running ------------------------------------------------------------------------------------


def is_done(run_dir: Path, steps: int) -> bool:
    latest = newest_checkpoint(run_dir)
    return latest is not None and latest.name == step_dir_name(steps)


def execute(config: str, run: Run, work_dir: Path, threads: int | None) -> float:
    """Train ``run`` (resuming it if a previous study was killed mid-run); its seconds."""
    run_dir = work_dir / run.name
    overrides = [*run.overrides]
    if newest_checkpoint(run_dir) is not None:
        overrides = [o for o in overrides if not o.startswith("train.branch_from=")]
        overrides.append("resume=true")
    began = time.perf_counter()
    if threads is None:  # in this process
        register_schemas()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config, overrides=overrides)
        Trainer(cfg, build_task(cfg), run_dir).fit()
        return time.perf_counter() - began
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config-name", config]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(run_dir / "study.log", "a") as log:
        result = subprocess.run(
            [*command, *overrides], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        raise RuntimeError(f"{run.name} failed (rc {result.returncode}); see {run_dir}/study.log")
    return time.perf_counter() - began


def run_all(
    config: str, runs: Sequence[Run], work_dir: Path, workers: int,
    on_done: Callable[[Run, float], None],
) -> None:  # fmt: skip
    """Run every run not yet finished in ``work_dir``, each once what it starts from has
    finished; ``on_done(run, seconds)`` as each ends."""
    pending = {r.name: r for r in runs if not is_done(work_dir / r.name, r.steps)}
    finished = {r.name for r in runs} - set(pending)
    progress = tqdm(total=len(runs), initial=len(finished), unit="run", desc=f"{config} runs")
    # a source outside ``runs`` has finished in the work dir (``needed`` leaves out only those)
    finished |= {source for r in runs for source in r.after} - {r.name for r in runs}

    def ready() -> list[Run]:
        found = [r for r in pending.values() if set(r.after) <= finished]
        if pending and not found and not active:
            raise RuntimeError(f"runs {sorted(pending)} wait for sources that are not finished")
        return found

    active: dict[concurrent.futures.Future, Run] = {}

    if workers == 0:
        while pending:
            run = ready()[0]
            on_done(run, execute(config, run, work_dir, None))
            finished.add(pending.pop(run.name).name)
            progress.update(1)
        progress.close()
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        while pending or active:
            for run in ready():
                if len(active) >= workers:
                    break
                active[pool.submit(execute, config, run, work_dir, threads)] = run
                del pending[run.name]
            done, _ = concurrent.futures.wait(active, return_when="FIRST_COMPLETED")
            for future in done:
                run = active.pop(future)
                on_done(run, future.result())
                finished.add(run.name)
                progress.update(1)
    progress.close()


def needed(runs: Sequence[Run], covered: set[str], work_dir: Path) -> list[Run]:
    """The runs no CSV row covers, and the chains they start from that the work dir lacks."""
    by_name = {run.name: run for run in runs}
    wanted = {run.name for run in runs if run.name not in covered}
    stack = list(wanted)
    while stack:
        for source in by_name[stack.pop()].after:
            if source not in wanted and not is_done(work_dir / source, by_name[source].steps):
                wanted.add(source)
                stack.append(source)
    return [run for run in runs if run.name in wanted]


def run_and_record(study: Any, tower: Any, runs: Sequence[Run], work_dir: Path, csv: Path):
    """Train what ``csv`` does not cover; append each finished run's rows to it as it ends."""
    signatures = {run.name: signature(tower.config, run, work_dir) for run in runs}
    covered = set(read_results(csv, signatures))

    def record(run: Run, seconds: float) -> None:
        if run.name not in covered:
            run_dir, name = work_dir / run.name, run.name
            growth_report.append_rows(
                csv, growth_report.run_rows(run_dir, name, signatures[name], seconds)
            )

    todo = needed(runs, covered, work_dir)
    for run in todo:  # finished by a study that stopped before writing its rows: rows from disk
        if run.name not in covered and is_done(work_dir / run.name, run.steps):
            record(run, math.nan)  # its seconds were not kept
    run_all(tower.config, todo, work_dir, study.workers, record)
    return read_results(csv, signatures)


def default_work_dir() -> Path:
    """Under the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``): no work tree's."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tokenformer-mm" / "growth_study"


def named_points(tower: Any, names: Sequence[str]) -> list[tuple[str, tuple[int, ...]]]:
    """The arms and grow points ``names`` name as the tables write them (``width4_exact@800``)."""
    points = {arm_name(arm, steps): (arm, steps) for arm, steps in arm_points(tower)}
    unknown = [name for name in names if name not in points]
    if unknown:
        raise ValueError(
            f"confirm_arms {unknown} name no arm of this study; its arms: {sorted(points)}"
        )
    return [points[name] for name in names]


def plan_confirmation(
    tower: Any, points: Sequence[tuple[str, tuple[int, ...]]], seeds: Sequence[int],
    work_dir: Path,
) -> list[Run]:  # fmt: skip
    """Both frontiers and every arm of ``points`` (each once) on each of ``seeds``."""
    points = list(dict.fromkeys(points))
    runs = []
    for seed in seeds:
        runs += [r for size in SIZES for r in plan_size(tower, size, seed, work_dir)]
        runs += [r for arm, steps in points for r in plan_arm(tower, arm, steps, seed, work_dir)]
    return runs


def study_tower(study: Any, name: str, report_only: bool) -> dict[str, Any]:
    """Screen every arm on ``seeds``, then the best arm, the arms ``confirm_arms`` names and the
    frontiers on ``confirm_seeds`` (what the CSV holds, with ``report_only``)."""
    tower = study[name]
    named = named_points(tower, study.confirm_arms)
    work_dir = Path(study.work_dir) if study.work_dir else default_work_dir()
    work_dir = (work_dir if work_dir.is_absolute() else ROOT / work_dir) / name
    csv = Path(study.results_dir) / f"growth_{name}.csv"
    csv = csv if csv.is_absolute() else ROOT / csv
    seed = study.seeds[0]
    screen = [r for size in SIZES for r in plan_size(tower, size, seed, work_dir)]
    screen += [r for a, s in arm_points(tower) for r in plan_arm(tower, a, s, seed, work_dir)]
    if report_only:
        results = read_results(csv, {r.name: signature(tower.config, r, work_dir) for r in screen})
    else:
        results = run_and_record(study, tower, screen, work_dir, csv)
    screened = [arm_result(tower, results, a, s, seed) for a, s in arm_points(tower)]
    screened = [r for r in screened if r is not None]
    points = list(dict.fromkeys([best_arm(screened), *named])) if screened else []
    confirm = plan_confirmation(tower, points, study.confirm_seeds, work_dir)
    runs = [*screen, *confirm]
    if report_only or not confirm:
        results = read_results(csv, {r.name: signature(tower.config, r, work_dir) for r in runs})
    else:
        results = run_and_record(study, tower, runs, work_dir, csv)
    seeds = [seed, *study.confirm_seeds]
    confirmed = [[arm_result(tower, results, a, steps, s) for s in seeds] for a, steps in points]
    return {
        "tower": tower,
        "csv": csv,
        "results": results,
        "screen": screened,
        "best": arm_name(*points[0]) if points else None,
        "confirmed": [[r for r in arm if r is not None] for arm in confirmed],  # the best first
        "seeds": seeds,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the test suite's version")
    parser.add_argument(
        "--report-only", action="store_true", help="no training: the report from the CSV"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the study config")
    args = parser.parse_args(argv)
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        study = compose("study/growth_quick" if args.quick else "study/growth", args.overrides)
    results = {name: study_tower(study, name, args.report_only) for name in study.towers}
    if study.report:
        command = "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
        )
        print(f"wrote {growth_report.write_report(study, results, command)}")
    return results


if __name__ == "__main__":
    main()
