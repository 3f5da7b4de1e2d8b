import pytest

from scripts.growth_study import ARMS, main


def test_quick_growth_study_grows_exactly_and_keeps_improving(tmp_path):
    report = tmp_path / "growth.md"
    results = main(["--quick", f"work_dir={tmp_path / 'runs'}", f"report={report}"])
    for tower in ("language", "vision"):
        runs = results[tower][0]
        assert set(runs) == set(ARMS)
        small_final = runs["small"]["curve"][-1][1]["val/loss"]
        exact_start = runs["exact"]["curve"][0][1]["val/loss"]
        official_start = runs["official"]["curve"][0][1]["val/loss"]
        assert exact_start == pytest.approx(small_final, abs=1e-5)  # the grown model starts there
        assert abs(official_start - small_final) > 1e-4  # official growth moves the function
        assert runs["exact"]["curve"][-1][1]["val/loss"] < exact_start  # and improves on it
        # compute is cumulative: the grown arms start where the small model's FLOPs ended
        assert runs["exact"]["curve"][0][0] == runs["small"]["flops"] > 0
        assert runs["scratch"]["flops"] > runs["small"]["flops"]
    text = report.read_text()
    assert "## language" in text and "## vision" in text and "ratio to (d)" in text
    assert (tmp_path / "growth_language.png").stat().st_size > 10_000
