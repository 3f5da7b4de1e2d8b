import math
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # as the scripts run

from growth_report import BEGIN, END, arm_result, flops_to_reach, interpolate
from growth_study import main

pytestmark = pytest.mark.slow  # study runs: the full suite only


def test_quick_growth_study_grows_exactly_and_the_grown_models_improve(tmp_path):
    """The study end to end on tiny models: frontiers of annealed branches, growth arms that are
    exact at the grow step, keep learning, and count the small model's FLOPs."""
    report = tmp_path / "growth.md"
    report.write_text(f"# By hand\n{BEGIN}\nold tables\n{END}\n## Reading, by hand\n")
    results = main(["--quick", f"work_dir={tmp_path / 'runs'}", f"report={report}"])
    for tower in ("language", "vision"):
        for arm in results[tower]["screen"]:
            assert abs(arm["growth_delta"]) <= 1e-6 * 10  # loss ~1-10: fp32 rounding only
            (first_flops, first_loss), *_ = arm["curve"]
            assert arm["final_loss"] < first_loss  # trains on after growing
            assert first_flops > arm["given"] > 0  # cumulative: the small model's FLOPs count
            assert not math.isnan(arm["frontier_loss_at_equal_flops"])
    text = report.read_text()
    assert "### language" in text and "### vision" in text and "sp, model-family" in text
    assert text.startswith("# By hand\n") and text.endswith(f"{END}\n## Reading, by hand\n")
    assert "old tables" not in text
    assert (tmp_path / "growth_language.png").stat().st_size > 10_000
    # a second call finds every run finished and only reads them
    again = main(["--quick", f"work_dir={tmp_path / 'runs'}", "report=null"])
    assert again["language"]["screen"][0]["points"] == results["language"]["screen"][0]["points"]


def test_a_study_on_a_fresh_machine_runs_only_what_its_results_csv_lacks(tmp_path):
    """The results CSV is the study's memory: with it alone (no work dir) the report renders
    without training, and a run whose rows are missing is trained again with the run its
    branch starts from, nothing else."""
    first = ["--quick", "towers=[language]", f"work_dir={tmp_path / 'first'}"]
    results = main([*first, f"results_dir={tmp_path}"])["language"]
    progressive = next(r for r in results["screen"] if r["arm"] == "width2x2_exact@16+24")
    assert len(progressive["curve"]) > 2 and abs(progressive["growth_delta"]) <= 1e-5
    fresh = tmp_path / "fresh"
    again = main(["--quick", "towers=[language]", f"work_dir={fresh}", f"results_dir={tmp_path}",
                  "--report-only"])["language"]  # fmt: skip
    assert [r["points"] for r in again["screen"]] == [r["points"] for r in results["screen"]]
    assert not fresh.exists()  # nothing trained
    csv_path = tmp_path / "growth_language.csv"
    lines = csv_path.read_text().splitlines()
    lost = "width4_exact@16-seed0/b20"  # the cooldown branch that grows the small run at 16
    csv_path.write_text("\n".join(line for line in lines if not line.startswith(lost)) + "\n")
    rerun = main(["--quick", "towers=[language]", f"work_dir={fresh}", f"results_dir={tmp_path}"])
    trained = sorted(
        str(p.parent.relative_to(fresh / "language")) for p in fresh.rglob("metrics.csv")
    )
    assert trained == ["small-seed0/b40", lost]
    points = {r["arm"]: r["points"] for r in rerun["language"]["screen"]}
    before = next(r["points"] for r in results["screen"] if r["arm"] == "width4_exact@16")
    assert [flops for flops, _ in points["width4_exact@16"]] == [flops for flops, _ in before]
    for (_, loss), (_, expected) in zip(points["width4_exact@16"], before, strict=True):
        assert loss == pytest.approx(expected, rel=1e-5)  # the same run again: the same losses
    # lost again, this time its source's run is finished in the work dir: only the branch runs
    csv_path.write_text("\n".join(line for line in lines if not line.startswith(lost)) + "\n")
    shutil.rmtree(fresh / "language" / lost)
    source = fresh / "language" / "small-seed0" / "b40" / "metrics.csv"
    untouched = source.stat().st_mtime_ns
    main(["--quick", "towers=[language]", f"work_dir={fresh}", f"results_dir={tmp_path}"])
    assert source.stat().st_mtime_ns == untouched
    assert (fresh / "language" / lost / "metrics.csv").is_file()
    # finished on disk by a study killed before it wrote the rows: the rows come from disk
    csv_path.write_text("\n".join(line for line in lines if not line.startswith(lost)) + "\n")
    finished = (fresh / "language" / lost / "metrics.csv").stat().st_mtime_ns
    again = main(["--quick", "towers=[language]", f"work_dir={fresh}", f"results_dir={tmp_path}"])
    assert (fresh / "language" / lost / "metrics.csv").stat().st_mtime_ns == finished
    assert any(line.startswith(lost) for line in csv_path.read_text().splitlines())
    points = {r["arm"]: r["points"] for r in again["language"]["screen"]}
    assert [loss for _, loss in points["width4_exact@16"]] == pytest.approx(
        [loss for _, loss in before], rel=1e-5
    )


def test_frontier_interpolation_is_linear_in_log_flops_and_never_extrapolates():
    points = [(1e9, 3.0), (1e11, 2.0), (1e12, 2.2)]
    assert math.isclose(interpolate(points, 1e10), 2.5)
    assert math.isnan(interpolate(points, 1e13)) and math.isnan(interpolate(points, 1e8))
    assert math.isclose(flops_to_reach(points, 2.5), 1e10)  # the first crossing
    assert flops_to_reach(points, 3.5) == 1e9  # already there at the first point
    assert math.isnan(flops_to_reach(points, 1.5))  # never reached


def test_sp_counts_the_big_frontiers_best_loss_where_it_first_reached_it():
    """A frontier whose last budget ends worse than an earlier one (a hard late stretch of the
    data): sp's target is the best loss at the FLOPs of the budget that reached it, not the
    last budget's loss at the last budget's FLOPs (which would credit the arm with the FLOPs
    the big model spent getting worse)."""
    from types import SimpleNamespace

    tower = SimpleNamespace(budgets=[100, 200, 300])
    big = {100: (2.0, 3.0), 200: (4.0, 2.0), 300: (6.0, 2.2)}  # budget: (FLOPs, loss)
    results = {f"big-seed0/b{b}": {"flops": f, "loss": loss} for b, (f, loss) in big.items()}
    results["small-seed0/b300"] = {"steps": [(100, 1.0), (300, 3.0)]}
    arm = {200: (2.5, 2.3), 300: (3.5, 2.1)}  # grown at step 100 of the small run
    for b, (flops, loss) in arm.items():
        results[f"a@100-seed0/b{b}"] = {"flops": flops, "loss": loss}
    results["a@100-seed0/b300"].update(curve=[], growth=[0.0])
    result = arm_result(tower, results, "a", (100,), 0)
    assert math.isnan(result["sp_cumulative"])  # 2.0 is never reached (its best is 2.1)
    results["a@100-seed0/b300"].update(flops=3.5, loss=1.9)
    result = arm_result(tower, results, "a", (100,), 0)
    reach = flops_to_reach([(2.5, 2.3), (3.5, 1.9)], 2.0)
    assert result["sp_cumulative"] == pytest.approx(4.0 / reach - 1)  # 4.0: the 200-step budget
    assert result["sp_family"] == pytest.approx(4.0 / (reach - 1.0) - 1)


def test_confirm_arms_plans_each_named_arm_on_every_confirm_seed_and_refuses_unknown_names():
    from growth_study import ROOT, named_points, plan_confirmation
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        tower = compose("study/growth_quick").language
    points = named_points(tower, ["width4_exact@16", "width2x2_exact@16+24"])
    assert points == [("width4_exact", (16,)), ("width2x2_exact", (16, 24))]
    runs = plan_confirmation(tower, [*points, points[0]], [1, 2], Path("work"))
    names = [run.name for run in runs]
    assert len(names) == len(set(names))  # an arm named twice is planned once
    for seed in (1, 2):
        for prefix in ("small", "big", "width4_exact@16", "width2x2_exact@16+24"):
            assert f"{prefix}-seed{seed}/b40" in names
    assert not any("seed0" in name or "depth2" in name for name in names)
    with pytest.raises(ValueError, match=r"width4_exact@800.*its arms: \['depth2_exact@16'"):
        named_points(tower, ["width4_exact@800"])
