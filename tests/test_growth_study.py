import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # as the scripts run

from growth_report import BEGIN, END, flops_to_reach, interpolate
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


def test_frontier_interpolation_is_linear_in_log_flops_and_never_extrapolates():
    points = [(1e9, 3.0), (1e11, 2.0), (1e12, 2.2)]
    assert math.isclose(interpolate(points, 1e10), 2.5)
    assert math.isnan(interpolate(points, 1e13)) and math.isnan(interpolate(points, 1e8))
    assert math.isclose(flops_to_reach(points, 2.5), 1e10)  # the first crossing
    assert flops_to_reach(points, 3.5) == 1e9  # already there at the first point
    assert math.isnan(flops_to_reach(points, 1.5))  # never reached
