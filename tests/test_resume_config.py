"""``resume=true`` continues the run's own config: what the command line omits comes from the
run, a change a run survives is applied and recorded, any other is refused (issue 26)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from tokenformer_mm.errors import InputError
from tokenformer_mm.train import Trainer, build_task
from tokenformer_mm.train.batches import EpochBatches

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


def test_a_run_saved_before_a_config_field_existed_resumes_with_its_default(tmp_path):
    """A checkpointed run from an older version, whose growth events lack a field added since
    (``tau_ramp``), resumes: the field takes its default, nothing counts as a change."""
    run_dir = tmp_path / "run"
    start_and_pause(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    older = OmegaConf.load(path)
    for event in older.growth.schedule:
        del event["tau_ramp"]
    path.write_text(OmegaConf.to_yaml(older))
    cfg = compose_config("vision", [*FIRST_START, f"run_dir={run_dir}", "resume=true"])
    trainer = Trainer(cfg, build_task(cfg), run_dir)
    assert trainer.step == 3
    trainer.fit()
    assert not (run_dir / "config_history.jsonl").exists()  # no change recorded


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


def test_a_resume_mid_epoch_with_other_data_workers_is_refused_and_at_its_end_allowed(tmp_path):
    """Before: allowed, and the fast-forward replayed another order of the epoch's batches (each
    worker reads its own shards), skipping some samples and repeating others."""
    run_dir = tmp_path / "run"
    first = [*TINY_VISION, "train.steps=4", "train.checkpoint_every=2"]  # 90 batches an epoch
    start_and_pause(run_dir, first, 2)
    cfg = compose_config(
        "vision", [*first, "resume=true", "data.num_workers=2", f"run_dir={run_dir}"]
    )
    with pytest.raises(InputError, match=r"batch 2 of epoch 0, read with data.num_workers=1;"):
        Trainer(cfg, build_task(cfg), run_dir)
    cfg.data.num_workers = 1
    Trainer(cfg, build_task(cfg), run_dir).fit()
    batches = EpochBatches(build_task(cfg).train_loader())  # at an epoch's end: any count
    batches.load_state_dict({"epoch": 1, "batch": 0, "num_workers": 3})
    assert batches.state_dict()["epoch"] == 1


def schedule_at(steps: int, position: int, optim: dict):
    """An AdamW and its schedule over ``steps`` steps, run to ``position``."""
    from tokenformer_mm.train.config import OptimConfig
    from tokenformer_mm.train.optim import build_optimizer

    model = torch.nn.Linear(4, 4)
    optimizer, scheduler = build_optimizer(model, OptimConfig(**optim), steps)
    for _ in range(position):
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


@pytest.mark.parametrize(
    "optim, warned",
    [({"lr": 2e-3, "warmup_steps": 100}, True), ({"lr": 2e-3, "schedule": "wsd"}, False)],
)
def test_a_resume_that_reshapes_the_schedule_says_how_the_rate_jumps(optim, warned, caplog):
    """Before: the README's own example (a finished 800-step cosine run resumed with
    train.steps=1000) raised the rate from 1e-5 to 2.4e-4 with no word. A WSD run resumed in
    its stable phase with more steps goes on at the same rate, silently."""
    from tokenformer_mm.train.start import continue_schedule

    # a finished 800-step cosine run; a 1000-step WSD run at step 600, in its stable phase
    finished = schedule_at(800, 800, optim)[1] if warned else schedule_at(1000, 600, optim)[1]
    optimizer, scheduler = schedule_at(1000, 0, optim)
    with caplog.at_level("WARNING", logger="tokenformer_mm.train.start"):
        continue_schedule(optimizer, scheduler, finished.state_dict())
    if warned:
        assert "was 1e-05 when the checkpoint was written and is 0.000243 " in caplog.text
        assert "(24.3x)" in caplog.text
        assert "optim.schedule=wsd" in caplog.text
    else:
        assert not caplog.text and optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)


def test_a_resume_with_a_lower_lr_trains_at_it():
    """Before: the saved schedule's base rate came back with its position, so optim.lr on a
    resume (allowed, and what the divergence message advises) changed nothing."""
    from tokenformer_mm.train.start import continue_schedule

    saved = schedule_at(1000, 400, {"lr": 2e-3, "schedule": "wsd"})[1]
    optimizer, scheduler = schedule_at(1000, 0, {"lr": 1e-3, "schedule": "wsd"})
    continue_schedule(optimizer, scheduler, saved.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # and stays there
