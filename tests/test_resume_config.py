"""``resume=true`` continues the run's own config: what the command line omits comes from the
run, a change a run survives is applied and recorded, any other is refused (issue 26)."""

from __future__ import annotations

import json
import subprocess

import pytest
from omegaconf import OmegaConf

from tokenformer_mm.train import Trainer, build_task

from .engine_utils import ROOT, TINY_VISION, compose_config, run, step_losses, train_command

FIRST_START = [
    *TINY_VISION,
    "train.steps=6",
    "train.checkpoint_every=3",
    "train.eval_every=3",
    "growth.schedule=[{step: 4, factor: 2}]",
]


def start_and_pause(run_dir, overrides=FIRST_START, until=3):
    cfg = compose_config("vision", [*overrides, f"run_dir={run_dir}"])
    Trainer(cfg, build_task(cfg), run_dir).fit(until=until)  # a checkpoint at step 3


def saved(run_dir):
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml")


@pytest.mark.slow
def test_resume_continues_the_saved_config_and_records_an_allowed_change(tmp_path):
    """Before: the resume trained today's defaults (a default-size model, 1000 steps, no growth)
    while .hydra/config.yaml still described the run."""
    run_dir = tmp_path / "run"
    start_and_pause(run_dir)
    run(train_command([f"run_dir={run_dir}", "resume=true"]))  # the README's command, as is
    assert sorted(step_losses(run_dir)) == list(range(1, 7))
    growth = [json.loads(line) for line in (run_dir / "growth.jsonl").read_text().splitlines()]
    assert [event["step"] for event in growth] == [4]  # the omitted schedule, kept
    assert not (run_dir / "config_history.jsonl").exists()

    run(train_command([f"run_dir={run_dir}", "resume=true", "train.steps=8"]))  # more steps
    assert sorted(step_losses(run_dir)) == list(range(1, 9))
    assert saved(run_dir).train.steps == 8 and saved(run_dir).model.kwargs.depth == 2
    (record,) = [json.loads(line) for line in (run_dir / "config_history.jsonl").open()]
    assert record["step"] == 6
    assert record["changes"] == {"train.steps": {"was": 6, "now": 8}}


@pytest.mark.slow
def test_resume_refuses_a_change_that_makes_another_run_naming_key_and_values(tmp_path):
    run_dir = tmp_path / "run"
    start_and_pause(run_dir)
    record = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = subprocess.run(
        train_command([f"run_dir={run_dir}", "resume=true", "seed=7"]),
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "seed is 0 in the run's config" in refused.stderr and "but 7 now" in refused.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == record


def test_a_trainer_given_another_model_to_resume_refuses_it(tmp_path):
    run_dir = tmp_path / "run"
    start_and_pause(run_dir, [*TINY_VISION, "train.steps=4", "train.checkpoint_every=2"], 2)
    cfg = compose_config(
        "vision",
        [
            *TINY_VISION,
            "train.steps=4",
            "++model.kwargs.depth=3",
            "resume=true",
            f"run_dir={run_dir}",
        ],
    )
    with pytest.raises(ValueError, match=r"model.kwargs.depth is 2 in the run's config .* 3 now"):
        Trainer(cfg, build_task(cfg), run_dir)
    cfg.model.kwargs.depth, cfg.train.steps = 2, 5  # a change a run survives: applied
    Trainer(cfg, build_task(cfg), run_dir).fit()
    assert saved(run_dir).train.steps == 5
