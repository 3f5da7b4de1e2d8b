"""The growth study's results and report: the results CSV, frontiers, each arm's speed-up,
tables, plots and the generated part of docs/growth.md (``scripts/growth_study.py`` runs it)."""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenformer_mm.train.metric_log import GROWTH_FILE, METRICS_FILE, read_csv

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("small", "big")  # the two scratch frontiers of a tower

# The report's generated part; text outside these markers (the reading, the recipe) is kept.
BEGIN, END = "<!-- growth_study.py: begin -->", "<!-- growth_study.py: end -->"

# The results CSV: a run's evaluations (kind "eval") and growth events (kind "grow": the loss
# after it and its change), with the signature of the settings that produced them.
FIELDS = ["run", "signature", "kind", "step", "flops", "val_loss", "grow_delta", "seconds"]
Results = Mapping[str, dict[str, Any]]  # run name -> what read_results makes of its rows


def arm_name(arm: str, steps: Sequence[int]) -> str:
    """An arm grown at ``steps``, as its runs and tables name it: ``width4@800``."""
    return f"{arm}@{'+'.join(map(str, steps))}"


def run_rows(run_dir: Path, name: str, signature: str, seconds: float) -> list[dict[str, Any]]:
    """A finished run's rows for the results CSV, from its ``metrics.csv`` and growth log."""
    common = {"run": name, "signature": signature, "seconds": f"{seconds:.0f}"}
    rows = [
        {**common, "kind": "eval", "step": r["step"], "flops": r["flops"],
         "val_loss": r["val/loss"]}
        for r in read_csv(run_dir / METRICS_FILE)
    ]  # fmt: skip
    growth = run_dir / GROWTH_FILE
    for line in growth.read_text().splitlines() if growth.exists() else []:
        event = json.loads(line)
        before, after = event["val_before"]["val/loss"], event["val_after"]["val/loss"]
        rows.append(
            {**common, "kind": "grow", "step": event["step"], "val_loss": f"{after:.9g}",
             "grow_delta": f"{after - before:.9g}"}
        )  # fmt: skip
    return rows


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Add a finished run's rows to the results CSV (its header first if it is new)."""
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_results(path: Path, signatures: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The runs of ``signatures`` (name -> signature) that the CSV holds with that signature:
    the annealed end point, the evaluations and the growth events of each."""
    if not path.is_file():
        return {}
    rows: dict[str, dict[tuple[str, int], dict[str, str]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if signatures.get(row["run"]) == row["signature"]:  # a rerun's rows replace
                rows.setdefault(row["run"], {})[(row["kind"], int(row["step"]))] = row
    results = {}
    for name, by_key in rows.items():
        evals = sorted((step, r) for (kind, step), r in by_key.items() if kind == "eval")
        grows = sorted((step, r) for (kind, step), r in by_key.items() if kind == "grow")
        results[name] = {
            "flops": float(evals[-1][1]["flops"]),
            "loss": float(evals[-1][1]["val_loss"]),
            "curve": [(float(r["flops"]), float(r["val_loss"])) for _, r in evals],
            "steps": [(step, float(r["flops"])) for step, r in evals],
            "growth": [float(r["grow_delta"]) for _, r in grows],
            "seconds": float(evals[-1][1]["seconds"]),
        }
    return results


def flops_at_step(run: dict[str, Any], step: int) -> float:
    """A fixed-size run's FLOPs at ``step``: linear between its evaluations (each step of one
    model costs the same), exact at any step between two of them."""
    (s0, f0), (s1, f1) = next(
        (a, b) for a, b in itertools.pairwise([(0, 0.0), *run["steps"]]) if a[0] <= step <= b[0]
    )
    return f0 + (f1 - f0) * (step - s0) / (s1 - s0)


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


def frontier(tower: Any, results: Results, size: str, seed: int) -> list[tuple[float, float]]:
    """A size's annealed (FLOPs, loss) at every budget; empty unless all are in ``results``."""
    names = [f"{size}-seed{seed}/b{b}" for b in sorted(tower.budgets)]
    if not all(name in results for name in names):
        return []
    return [(results[name]["flops"], results[name]["loss"]) for name in names]


def best_scratch(tower: Any, results: Results, seed: int, flops: float) -> float:
    """The lowest loss any scratch model reaches within ``flops``: each size's frontier between
    its budgets, and its largest budget's model for any compute beyond it (one stops there)."""
    candidates = []
    for size in SIZES:
        points = frontier(tower, results, size, seed)
        candidates += [interpolate(points, flops)] + [loss for f, loss in points if f <= flops]
    return min((loss for loss in candidates if not math.isnan(loss)), default=math.nan)


def arm_result(
    tower: Any, results: Results, arm: str, steps: Sequence[int], seed: int
) -> dict[str, Any] | None:
    """An arm's annealed points and what they save against the big frontier (same seed);
    ``None`` until its runs, the small run and the big frontier are all in ``results``."""
    prefix, longest = f"{arm_name(arm, steps)}-seed{seed}", max(tower.budgets)
    small = results.get(f"small-seed{seed}/b{longest}")
    main = results.get(f"{prefix}/b{longest}")
    big = frontier(tower, results, "big", seed)
    budgets = [b for b in sorted(tower.budgets) if f"{prefix}/b{b}" in results]
    if small is None or main is None or not big:
        return None
    points = [(results[f"{prefix}/b{b}"]["flops"], results[f"{prefix}/b{b}"]["loss"])
              for b in budgets]  # fmt: skip
    given = flops_at_step(small, steps[0])  # the small model's compute up to the first growth
    # the big model's best (lowest) loss over its budgets, at the FLOPs of the budget that
    # reached it: a budget past it that ends worse (here the data's late stretch) does not count
    target_flops, target = min(big, key=lambda point: point[1])
    reach = flops_to_reach(points, target)
    final_flops, final_loss = points[-1]
    return {
        "arm": arm_name(arm, steps),
        "spec": (arm, tuple(steps)),  # the arm in the study's config and its grow points
        "seed": seed,
        "points": points,
        "curve": main["curve"],
        "growth_delta": max(main["growth"], key=abs),
        "given": given,
        "final_loss": final_loss,
        "frontier_loss_at_equal_flops": interpolate(big, final_flops),
        "envelope_loss_at_equal_flops": best_scratch(tower, results, seed, final_flops),
        "reach": reach,
        "budgets": budgets,  # each point's: the arm against the big frontier at its FLOPs
        "gaps": [loss - interpolate(big, flops) for flops, loss in points],
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


def frontier_table(tower: Any, results: Results, seeds: Sequence[int]) -> str:
    rows = []
    for size in SIZES:
        frontiers = [f for f in (frontier(tower, results, size, s) for s in seeds) if f]
        for index, budget in enumerate(sorted(tower.budgets) if frontiers else []):
            per_seed = [f[index] for f in frontiers]
            rows.append(
                {
                    "size": size,
                    "budget (steps)": str(budget),
                    "TFLOPs": fmt([f for f, _ in per_seed], 3, 1e12),
                    "seeds": str(len(per_seed)),
                    "val loss": fmt([loss for _, loss in per_seed]),
                }
            )
    return table(rows)


def arm_table(results: Sequence[Sequence[dict[str, Any]]]) -> str:
    """One row per arm: each a list of per-seed results ("" for none)."""
    if not results:
        return ""
    rows = []
    for per_seed in results:
        first = per_seed[0]
        rows.append(
            {
                "arm": first["arm"],
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


def budget_table(results: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Per arm and budget: its annealed loss minus the big frontier's at the same FLOPs (negative:
    growth is ahead), over the seeds given."""
    budgets = sorted({b for per_seed in results for r in per_seed for b in r["budgets"]})
    rows = []
    for per_seed in results:
        row = {"arm": per_seed[0]["arm"], "seeds": str(len(per_seed))}
        for budget in budgets:
            gaps = [r["gaps"][r["budgets"].index(budget)] for r in per_seed
                    if budget in r["budgets"]]  # fmt: skip
            row[f"{budget} steps"] = f"{fmt(gaps)}" if gaps else ""
        rows.append(row)
    return table(rows)


def plot(tower_name: str, tower: Any, runs: Results, results: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for size, color in zip(SIZES, ("tab:blue", "tab:red"), strict=True):
        points = frontier(tower, runs, size, 0)
        ax.plot(
            [f / 1e12 for f, _ in points], [loss for _, loss in points], "o-", color=color,
            lw=2.5, label=f"{size} from scratch (frontier)",
        )  # fmt: skip
    for index, result in enumerate(results):
        color = plt.cm.tab10((index + 2) % 10)
        label = result["arm"]
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


def best_arm(results: Sequence[dict[str, Any]]) -> tuple[str, tuple[int, ...]]:
    """The arm with the largest cumulative speed-up; by final loss at equal FLOPs if none reach."""

    def key(r: dict[str, Any]) -> tuple[float, float]:
        sp = r["sp_cumulative"]
        return (
            -math.inf if math.isnan(sp) else sp,
            r["frontier_loss_at_equal_flops"] - r["final_loss"],
        )

    best = max(results, key=key)
    return best["spec"]


def write_report(study: Any, results: dict[str, dict[str, Any]], command: str) -> Path:
    report = Path(study.report)
    report = report if report.is_absolute() else ROOT / report
    sections = []
    for name, result in results.items():
        image = report.parent / f"growth_{name}.png"
        plot(name, result["tower"], result["results"], result["screen"], image)
        seconds = [run["seconds"] for run in result["results"].values()]
        seconds = [s for s in seconds if not math.isnan(s)]  # nan: a run recorded from disk
        confirmed = [arm for arm in result["confirmed"] if arm]
        sections.append(
            f"### {name}\n\n{len(result['results'])} runs in `{Path(result['csv']).name}`: "
            f"{sum(seconds) / 3600:.1f} h of runs, the longest {max(seconds, default=0) / 60:.1f}"
            f" min\n\n#### Scratch frontier\n\n"
            f"{frontier_table(result['tower'], result['results'], result['seeds'])}\n\n"
            f"#### Every arm, seed {study.seeds[0]}\n\n"
            + (arm_table([[r] for r in result["screen"]]) or "(no arm finished yet)")
            + "\n\nEach annealed budget: the arm's loss minus the big frontier's at equal "
            "(cumulative) FLOPs; negative: growth is ahead.\n\n"
            + budget_table([[r] for r in result["screen"]] + confirmed)
            + f"\n\n#### Every seed: the best arm ({result['best'] or 'not yet known'}) and "
            f"`confirm_arms`, the seeds finished\n\n{arm_table(confirmed)}\n\n"
            f"![{name}]({image.name})\n"
        )
    header = (
        "## The study's output\n\n"
        f"- command: `{command}`\n- date: {datetime.date.today().isoformat()}\n"
        "- settings: `configs/study/growth.yaml`\n"
        "- sp = FLOPs the big frontier needs for its best loss (its lowest over the budgets) / "
        "FLOPs the arm needs "
        "for it - 1 (cumulative: all the arm's FLOPs; model-family: less the small model's "
        "FLOPs up to the grow step)\n- ± is the sample std over seeds (ddof 1)\n\n"
    )
    generated = f"{BEGIN}\n{header}" + "\n".join(sections) + f"\n{END}\n"
    text = report.read_text() if report.exists() else ""
    if BEGIN in text and END in text:  # keep what was written by hand around the tables
        before, rest = text.split(BEGIN, 1)
        generated = before + generated + rest.split(END, 1)[1].lstrip("\n")
    report.write_text(generated)
    return report
