import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
from hydra.errors import ConfigCompositionException

from tokenformer_mm import Pattention
from tokenformer_mm.checkpoint_layout import newest_checkpoint
from tokenformer_mm.shards import write_shards
from tokenformer_mm.train import Trainer, build_task, checkpoint, load_run
from tokenformer_mm.train.config import validate
from tokenformer_mm.train.optim import WarmupCosine, param_groups
from tokenformer_mm.vision.sources import digits_samples

from .conftest import assert_equal_up_to_rounding
from .engine_utils import (
    ROOT,
    TINY_VISION,
    compose_config,
    fit_here,
    run,
    step_losses,
    train_command,
    train_until_killed,
)


def trainer_for(run_dir, overrides):
    cfg = compose_config("vision", [*TINY_VISION, f"run_dir={run_dir}", *overrides])
    return Trainer(cfg, build_task(cfg), run_dir)


@pytest.mark.slow
def test_short_digits_run_learns_and_writes_its_outputs(tmp_path):
    """A shortened main job learns: >= 50 % of 10 classes (chance 10 %) after 160 steps
    (measured with one thread: 71.7, 69.2, 68.6 % for seeds 0-2; 52-72 % after 120)."""
    overrides = [
        "model.img_size=24",
        "++model.kwargs.embed_dim=64",
        "++model.kwargs.qkv_tokens=64",
        "++model.kwargs.ffn_tokens=256",
        "train.batch_size=64",
        "train.steps=160",
        "train.eval_every=80",
        "train.checkpoint_every=80",
        "optim.lr=3e-3",
        "optim.warmup_steps=20",
        "data.num_workers=2",
    ]
    summary = trainer_for(tmp_path, overrides).fit()
    assert summary["metrics"]["val/top1"] >= 50
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",")[:6] == ["step", "epoch", "train/loss", "lr", "params", "flops"]
    assert {"val/loss", "val/top1", "val/top5"} <= set(header.split(","))
    last = newest_checkpoint(tmp_path / "checkpoints")
    assert (
        last.name == "step_00000160"
        and len(checkpoint.checkpoint_dirs(tmp_path / "checkpoints")) == 2
    )
    state = torch.load(last / "state.pt", weights_only=True)
    assert state["step"] == 160 and "optimizer" in state and state["ranks"][0]["data"]["epoch"] >= 6


@pytest.mark.slow
def test_growth_mid_run_is_exact_keeps_moments_and_keeps_learning(tmp_path):
    trainer = trainer_for(tmp_path, ["train.steps=60", "train.eval_every=20"])
    trainer.fit(until=30)
    flops_before_growth = trainer.flops_per_item
    layer = trainer.model.blocks[0].ffn
    moments = {k: v.clone() for k, v in trainer.optimizer.state[layer.key_tokens].items()}
    record = trainer.grow(factor=2.0)
    assert record["params_after"] > record["params_before"]
    assert record["val_after"]["val/loss"] == pytest.approx(
        record["val_before"]["val/loss"], abs=1e-5
    )
    assert record["val_after"]["val/top1"] == record["val_before"]["val/top1"]
    state = trainer.optimizer.state[layer.key_tokens]
    assert layer.num_tokens == 128
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key][:64], moments[key]) and not state[key][64:].any()
    trainer.fit()
    final = trainer.eval_rows[-1]
    assert final["val/loss"] < record["val_after"]["val/loss"]
    assert final["params"] == record["params_after"]
    assert trainer.flops_per_item > flops_before_growth  # the grown model costs more per image
    assert json.loads((tmp_path / "growth.jsonl").read_text())["step"] == 30


@pytest.mark.slow
def test_warm_start_from_a_smaller_run_is_exact(tmp_path):
    small = trainer_for(tmp_path / "small", ["train.steps=20"])
    small_metrics = small.fit()["metrics"]
    big = trainer_for(
        tmp_path / "big",
        [
            "++model.kwargs.qkv_tokens=64",
            "++model.kwargs.ffn_tokens=128",
            f"+growth.init_from={tmp_path / 'small' / 'checkpoints' / 'step_00000020'}",
        ],
    )
    assert big.growth_events[0]["params_after"] > big.growth_events[0]["params_before"]
    metrics = big.task.evaluate(big.model, big.eval_loader)
    assert metrics["val/loss"] == pytest.approx(small_metrics["val/loss"], abs=1e-5)


@pytest.mark.slow
def test_ema_weights_are_saved_and_evaluated(tmp_path):
    trainer = trainer_for(tmp_path, ["train.steps=6", "train.ema_decay=0.9"])
    trainer.fit()
    last = newest_checkpoint(tmp_path / "checkpoints")
    ema = safetensors.torch.load_file(last / checkpoint.EMA_FILE)
    live = safetensors.torch.load_file(last / checkpoint.MODEL_FILE)
    key = "blocks.0.ffn.value_tokens"
    assert not torch.equal(ema[key], live[key])
    assert torch.equal(ema[key], trainer.ema.module.state_dict()[key])


def test_param_groups_decay_only_matrices_and_tokens_as_configured(tmp_path):
    model = trainer_for(tmp_path, ["train.steps=2"]).model
    groups = {g["name"]: g for g in param_groups(model, 0.05, 0.01)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "head.bias"} <= no_decay
    assert {names[id(p)] for p in groups["decay"]["params"]} == {
        "patch_embed.proj.weight",
        "head.weight",
    }
    tokens = {id(p) for m in model.modules() if isinstance(m, Pattention) for p in m.parameters()}
    assert {id(p) for p in groups["tokens"]["params"]} == tokens
    assert groups["tokens"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0
    assert param_groups(model, 0.05, None)[-1]["weight_decay"] == 0.05


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.train_shards=/nowhere/train-*.tar", "data.val_shards=/nowhere/val-*.tar"],
            "matches no files",
        ),
        (
            ["model.name=tokenformer_huge_patch16_224"],
            "unknown model 'tokenformer_huge_patch16_224'",
        ),
        (["train.batch_size=0"], "train.batch_size must be positive"),
        (["train.precision=fp16"], "train.precision must be one of"),
        (["growth.schedule=[{step: 5000, factor: 2}]"], "growth.schedule steps"),
        (["growth.schedule=[{step: 5, factor: 2, kinds: [mlp]}]"], "growth.schedule kinds"),
        (["growth.schedule=[{step: 5, factor: 2, lr_scale: 0}]"], "lr_scale .* positive"),
        (["growth.schedule=[{step: 5, factor: 2, tau_ramp: -1}]"], "tau_ramp is a number of"),
        (
            ["growth.schedule=[{step: 2, factor: 2, tau_ramp: 4}, {step: 4, depth: 2}]"],
            "a depth growth inside the τ ramp of the event at step 2",
        ),
        (
            ["growth.schedule=[{step: 2, factor: 2, tau_ramp: 4}]", "growth.init=official"],
            "tau_ramp moves τ after exact growth",
        ),
        (["adapt.modules_to_save=[head]"], r"modules_to_save=\['head'\] trains modules beside"),
        (["growth.init=random"], "growth.init must be one of"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        trainer_for(tmp_path, overrides)
    assert not (tmp_path / "train_steps.csv").exists()


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (ROOT / "configs" / "growth").glob("*.yaml"))
)
@pytest.mark.parametrize("job", ["language", "vision"])
def test_every_growth_preset_is_a_valid_run_of_each_main_job(job, preset):
    validate(compose_config(job, [f"growth={preset}"]))


def test_config_typos_and_wrong_types_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_config("vision", ["optim.lrr=1e-3"])
    with pytest.raises(ConfigCompositionException, match="batch_size"):
        compose_config("vision", ["train.batch_size=many"])


@pytest.mark.slow
def test_a_run_refuses_to_overwrite_another_unless_resuming(tmp_path):
    trainer_for(tmp_path, ["train.steps=2"]).fit()
    with pytest.raises(ValueError, match="pass resume=true"):
        trainer_for(tmp_path, ["train.steps=4"])


@pytest.mark.slow
def test_resume_after_sigkill_replays_the_same_losses(tmp_path):
    """Killed after a checkpoint, resumed: the remaining steps match an uninterrupted run (in
    this process; with a growth event before the kill, so the resume also restores the grown
    sizes). The resumed run then evaluates and exports through the scripts."""
    common = [
        *TINY_VISION,
        "train.steps=24",
        "train.checkpoint_every=4",
        "train.eval_every=12",
        "growth.schedule=[{step: 6, factor: 2}]",
        "++model.kwargs.drop_path_rate=0.2",  # training draws from the RNG at every step
        "data.num_workers=2",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    fit_here([*common, f"run_dir={full}"])

    train_until_killed(
        train_command([*common, f"run_dir={killed}"]), killed / "checkpoints" / "step_00000008"
    )
    resumed_from = newest_checkpoint(killed / "checkpoints")
    assert resumed_from is not None and int(resumed_from.name[5:]) < 24

    run(train_command([*common, f"run_dir={killed}", "resume=true"]))
    expected, got = step_losses(full), step_losses(killed)
    assert sorted(got) == list(range(1, 25))
    for step in range(int(resumed_from.name[5:]) + 1, 25):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    grown = safetensors.torch.load_file(
        newest_checkpoint(killed / "checkpoints") / "model.safetensors"
    )
    assert grown["blocks.0.ffn.key_tokens"].shape[0] == 128

    # scripts/evaluate.py rebuilds the grown model from the run and reproduces its final metrics
    result = run([sys.executable, "scripts/evaluate.py", str(killed)])
    final = json.loads(result.stdout)
    last_row = (killed / "metrics.csv").read_text().splitlines()[-1].split(",")
    header = (killed / "metrics.csv").read_text().splitlines()[0].split(",")
    assert final["val/top1"] == pytest.approx(float(last_row[header.index("val/top1")]))

    # scripts/export.py --timm: timm's own local folder, which timm builds at the grown size
    run([sys.executable, "scripts/export.py", str(killed), str(tmp_path / "timm"), "--timm"])
    import timm

    _, _, model, _ = load_run(killed)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_equal_up_to_rounding(loaded.eval()(images), model.eval()(images))


@pytest.mark.slow
def test_kill_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = f"""
import sys, torch
from torch import nn
from tokenformer_mm.train import checkpoint
model = nn.Linear(4096, 4096)
checkpoint.save({str(tmp_path)!r}, 1, model, {{"step": 1}})
print("saved", flush=True)
big = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(12)])  # ~800 MB: a slow save
checkpoint.save({str(tmp_path)!r}, 2, big, {{"step": 2}})
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saved"
    staging = tmp_path / "step_00000002.tmp"
    deadline = time.time() + 60
    while not staging.exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "step_00000002").exists()
    last = newest_checkpoint(tmp_path)
    assert last.name == "step_00000001"
    assert checkpoint.load_state(last) == {"step": 1}
    assert checkpoint.load_weights(last)["weight"].shape == (4096, 4096)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """DDP over gloo: 2 processes x batch 8 end with the parameters of 1 process x batch 16.

    Shards of exactly 8 samples, no sample shuffle and no flips make both runs see the same
    global batches (crops are seeded per sample, so they agree too).
    """
    shards = tmp_path / "shards"
    write_shards(digits_samples("train"), shards, "train", 8)
    write_shards(digits_samples("val"), shards, "val", 60)
    common = [
        *TINY_VISION,
        f"data.train_shards='{shards}/train-{{000000..000179}}.tar'",  # quoted: braces
        f"data.val_shards={shards}/val-*.tar",
        "data.shuffle_buffer=1",
        "data.hflip=0",
        "train.steps=6",
        "train.eval_every=6",
        "data.num_workers=1",
    ]
    one = compose_config("vision", [*common, "train.batch_size=16", f"run_dir={tmp_path / 'one'}"])
    Trainer(one, build_task(one), tmp_path / "one").fit()  # the reference, in this process
    run(train_command([*common, "train.batch_size=8", f"run_dir={tmp_path / 'two'}"], processes=2))
    one = checkpoint.load_weights(newest_checkpoint(tmp_path / "one" / "checkpoints"))
    two = checkpoint.load_weights(newest_checkpoint(tmp_path / "two" / "checkpoints"))
    for key in one:
        assert_equal_up_to_rounding(two[key], one[key])
    assert step_losses(tmp_path / "one")[6] == pytest.approx(
        step_losses(tmp_path / "two")[6], abs=1e-5
    )


@pytest.mark.slow
def test_cli_prints_results_and_multirun_sweeps(tmp_path):
    sweep = ["-m", *TINY_VISION, "train.steps=3", f"run_dir={tmp_path}", "optim.lr=1e-3,2e-3"]
    result = run(train_command(sweep))
    for job in ("0", "1"):
        assert newest_checkpoint(tmp_path / job / "checkpoints").name == "step_00000003"
    assert result.stdout.count("final validation: val/loss") == 2
    typo = subprocess.run(
        train_command(["optim.lrr=1"]), capture_output=True, text=True, cwd=tmp_path
    )
    assert typo.returncode != 0 and "Key 'lrr' not in 'OptimConfig'" in typo.stderr


def test_mixup_runs_through_the_engine(tmp_path):
    summary = trainer_for(
        tmp_path, ["train.steps=3", "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0"]
    ).fit()
    assert summary["metrics"]["val/loss"] > 0


def test_warmup_stable_decay_schedule():
    from tokenformer_mm.train.optim import WarmupStableDecay

    schedule = WarmupStableDecay(warmup=4, total=20, decay=5, min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert all(schedule(s) == 1.0 for s in range(4, 15))  # stable until the last 5 steps
    assert [round(schedule(s), 6) for s in range(15, 21)] == [1.0, 0.82, 0.64, 0.46, 0.28, 0.1]


def test_a_growth_events_lr_scale_holds_from_its_step_on_and_in_a_branch_past_it(tmp_path, caplog):
    """lr_scale multiplies the schedule from the grow step on: the rate is a function of the
    step, so a branch from a checkpoint after the growth trains at the scaled rate too, and one
    from the grow step itself grows at that rate without a warning of a reshaped schedule."""
    common = ["train.steps=6", "train.eval_every=6", "train.keep_checkpoints=6"]
    common += ["optim.schedule=wsd", "optim.warmup_steps=1"]
    grow = "growth.schedule=[{step: 2, factor: 2%s}]"
    plain = trainer_for(tmp_path / "plain", [*common, grow % ""])
    scaled = trainer_for(tmp_path / "scaled", [*common, grow % ", lr_scale: 0.25"])
    ratios, rates = [], {}
    for until in range(1, 7):  # after ``until`` updates: the rate of the next one
        plain.fit(until=until)
        scaled.fit(until=until)
        rates[until] = scaled.optimizer.param_groups[0]["lr"]
        ratios.append(rates[until] / plain.optimizer.param_groups[0]["lr"])
    assert ratios[0] == 1.0  # the update before the growth
    assert ratios[1:] == pytest.approx([0.25] * 5, rel=1e-12)  # the grow step's update on
    step_3 = tmp_path / "scaled" / "checkpoints" / "step_00000003"
    branch = trainer_for(
        tmp_path / "branch", [*common, grow % ", lr_scale: 0.25", f"train.branch_from={step_3}"]
    )
    assert branch.optimizer.param_groups[0]["lr"] == pytest.approx(rates[3], rel=1e-12)
    step_2 = tmp_path / "plain" / "checkpoints" / "step_00000002"  # before its growth
    caplog.clear()
    at_growth = trainer_for(
        tmp_path / "at_growth", [*common, grow % ", lr_scale: 0.25", f"train.branch_from={step_2}"]
    )
    assert at_growth.optimizer.param_groups[0]["lr"] == pytest.approx(rates[2], rel=1e-12)
    assert "learning rate at step" not in caplog.text
    at_growth.fit()
    assert at_growth.growth_events[0]["step"] == 2


def test_a_tau_ramp_keeps_growth_exact_then_moves_tau_geometrically_and_resumes(tmp_path):
    """tau_ramp: at the grow step the function is unchanged (τ kept), then τ moves from
    sqrt(n_small) to sqrt(n) over the ramp's steps, a function of the step: a branch from a
    checkpoint inside the ramp ends where the uninterrupted run does."""
    common = ["train.steps=8", "train.eval_every=8", "train.keep_checkpoints=8"]
    common += ["train.checkpoint_every=1", "growth.schedule=[{step: 2, factor: 2, tau_ramp: 4}]"]
    common += ["train.ema_decay=0.5"]
    trainer = trainer_for(tmp_path / "ramp", common)
    layer = lambda: trainer.model.blocks[0].ffn  # noqa: E731  (growth replaces its tensors)
    start, end = math.sqrt(64), math.sqrt(128)
    taus = []
    for until in range(1, 9):
        trainer.fit(until=until)
        taus.append(layer().tau.item())
        assert trainer.ema.module.blocks[0].ffn.tau.item() == taus[-1]  # set, not averaged
    record = trainer.growth_events[0]
    assert record["val_after"]["val/loss"] == record["val_before"]["val/loss"]  # exact
    expected = [start] * 3 + [start ** (1 - f / 4) * end ** (f / 4) for f in (1, 2, 3, 4, 4)]
    assert taus == pytest.approx(expected, rel=1e-6)
    assert layer().tau_value == pytest.approx(end, rel=1e-12)
    assert trainer.model.blocks[0].q.tau.item() == pytest.approx(math.sqrt(2 * 32), rel=1e-6)
    inside = tmp_path / "ramp" / "checkpoints" / "step_00000004"
    branch = trainer_for(tmp_path / "branch", [*common, f"train.branch_from={inside}"])
    branch.fit()
    for name, tensor in trainer.model.state_dict().items():
        assert_equal_up_to_rounding(branch.model.state_dict()[name], tensor)


def test_a_resumed_runs_metrics_csv_keeps_its_rows_byte_for_byte(tmp_path):
    """Before: a resume read metrics.csv back as floats and rewrote ``9`` as ``9.0``."""
    from tokenformer_mm.train.metric_log import METRICS_FILE, MetricLog

    rows = [
        {"step": 2, "epoch": 0, "train/loss": 0.1 + 0.2, "params": 9, "flops": 1.5e16},
        {"step": 4, "epoch": 1, "train/loss": 1e-05, "params": 9, "flops": 0.0, "data/short": 1},
        {"step": 6, "epoch": 1, "train/loss": float("nan"), "params": 18, "flops": 4.5e16},
    ]
    first = MetricLog(tmp_path, write=True)
    for row in rows:
        first.log_evaluation(row)
    written = (tmp_path / METRICS_FILE).read_bytes()
    resumed = MetricLog(tmp_path, write=True)
    resumed.resume(4)
    typed = [[(key, type(value), value) for key, value in row.items()] for row in rows[:2]]
    assert [[(k, type(v), v) for k, v in row.items()] for row in resumed.eval_rows] == typed
    resumed.log_evaluation(rows[2])  # the killed run's step 6, trained again
    assert (tmp_path / METRICS_FILE).read_bytes() == written


@pytest.mark.slow
def test_a_cooldown_branch_equals_a_run_scheduled_for_its_budget(tmp_path):
    """WSD: a branch from step 4 of an 8-step run, decaying over 2 steps, ends with the weights
    of a 6-step run with the same 2-step decay (same steps, data and RNG up to the branch)."""
    common = ["optim.schedule=wsd", "optim.decay_steps=2", "train.eval_every=100"]
    long, short, branch = tmp_path / "long", tmp_path / "short", tmp_path / "branch"
    trainer_for(long, [*common, "train.steps=8", "train.checkpoint_every=4"]).fit()
    trainer_for(short, [*common, "train.steps=6", "train.checkpoint_every=6"]).fit()
    step_4 = long / "checkpoints" / "step_00000004"
    trainer_for(branch, [*common, "train.steps=6", f"train.branch_from={step_4}"]).fit()
    ours = checkpoint.load_weights(newest_checkpoint(branch / "checkpoints"))
    expected = checkpoint.load_weights(newest_checkpoint(short / "checkpoints"))
    assert newest_checkpoint(branch / "checkpoints").name == "step_00000006"
    for key in expected:
        assert_equal_up_to_rounding(ours[key], expected[key])
    assert set(step_losses(branch)) == {5, 6}  # only the decay was trained in the branch
    far = checkpoint.load_weights(newest_checkpoint(long / "checkpoints"))
    assert any(not torch.equal(far[k], expected[k]) for k in expected)


def test_a_branch_must_name_a_checkpoint_and_continue_it(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = compose_config(
        "vision", [*TINY_VISION, f"train.branch_from={tmp_path / 'empty'}", f"run_dir={tmp_path}"]
    )
    with pytest.raises(ValueError, match=r"train.branch_from=.*empty.* is not a checkpoint"):
        Trainer(cfg, build_task(cfg), tmp_path / "run")
    bad = compose_config("vision", ["optim.schedule=linear"])
    with pytest.raises(ValueError, match=r"optim.schedule must be one of \('cosine', 'wsd'\)"):
        validate(bad)


@pytest.mark.slow
@pytest.mark.parametrize("parametrization", ["standard", "mup"])
def test_depth_and_width_growth_mid_run_is_exact_and_a_branch_after_it_replays_the_run(
    tmp_path, parametrization
):
    """A run deepened x2 and widened x2 at step 6 (EMA on): the loss does not move at the growth,
    and a run branched from its step-10 checkpoint (built at the initial size) takes the same
    steps as the uninterrupted run: the weights, optimizer order and EMA load as grown. Under μP
    the growth rescales the old values, their moments and the EMA's (q/k/v/proj multiplier 1
    -> 1/2, FFN 2 -> 1)."""
    common = [
        f"++model.kwargs.parametrization={parametrization}",
        "train.steps=14",
        "train.checkpoint_every=10",
        "train.ema_decay=0.9",
        "growth.schedule=[{step: 6, factor: 2, depth: 2}]",
    ]
    trainer = trainer_for(tmp_path / "run", common)
    trainer.fit()
    (event,) = trainer.growth_events
    assert event["depth"] == 2 and len(trainer.model.blocks) == 4
    assert event["params_after"] > 2 * event["params_before"]
    before, after = event["val_before"]["val/loss"], event["val_after"]["val/loss"]
    assert after == pytest.approx(before, rel=1e-6)  # exact growth: fp32 rounding only
    branch = trainer_for(
        tmp_path / "branch",
        [*common, f"train.branch_from={tmp_path / 'run' / 'checkpoints' / 'step_00000010'}"],
    )
    assert len(branch.model.blocks) == 4 and branch.step == 10
    branch.fit()
    ours, expected = step_losses(tmp_path / "branch"), step_losses(tmp_path / "run")
    assert set(ours) == {11, 12, 13, 14}
    assert_equal_up_to_rounding(
        torch.tensor([ours[s] for s in ours]), torch.tensor([expected[s] for s in ours])
    )
    for name, value in branch.ema.module.state_dict().items():
        assert_equal_up_to_rounding(value, trainer.ema.module.state_dict()[name])


def test_depth_growth_configs_are_checked_before_training():
    bad = compose_config("vision", ["growth.schedule=[{step: 5, factor: 1, depth: 1}]"])
    with pytest.raises(ValueError, match=r"must grow something, got factor=1.0, depth=1"):
        validate(bad)
    bad = compose_config("vision", ["growth.depth_init=copy"])
    with pytest.raises(ValueError, match=r"growth.depth_init must be one of \('exact', 'stack'\)"):
        validate(bad)
    for override, message in [
        ("growth.schedule=[{step: 5, factor: nan}]", "must grow something, got factor=nan"),
        ("growth.schedule=[{step: 5, factor: inf}]", "must grow something, got factor=inf"),
        ("growth.schedule=[{step: 5, factor: 2, lr_scale: inf}]", "finite and positive, got inf"),
        ("growth.perturbation=inf", "finite positive number, got inf"),
    ]:
        extra = ["growth.init=perturbed"] if "perturbation" in override else []
        with pytest.raises(ValueError, match=message):
            validate(compose_config("vision", [override, *extra]))


@pytest.mark.slow
def test_compiled_training_matches_eager_through_growth(tmp_path):
    """train.compile=true: the training forward runs through torch.compile (aot_eager here: the
    same graph capture and AOT autograd as inductor without its C++ build; tests/gpu/ compiles
    with inductor), recompiled after the growth event, and trains like eager."""
    common = ["train.steps=4", "train.eval_every=4", "growth.schedule=[{step: 2, factor: 2}]"]
    eager = trainer_for(tmp_path / "eager", common)
    eager.fit()
    compiled = trainer_for(
        tmp_path / "compiled", [*common, "train.compile=true", "train.compile_backend=aot_eager"]
    )
    assert isinstance(compiled.train_module, torch._dynamo.eval_frame.OptimizedModule)
    compiled.fit()
    assert compiled.train_module._orig_mod is compiled.model  # rebuilt around the grown model
    expected, got = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    assert sorted(got) == list(range(1, 5))
    for step, loss in expected.items():  # the same ATen ops, fused differently: rounding only
        assert got[step] == pytest.approx(loss, rel=1e-5), step
    saved = checkpoint.load_weights(newest_checkpoint(tmp_path / "compiled" / "checkpoints"))
    assert not [key for key in saved if "_orig_mod" in key]  # checkpoints keep the model's keys


def test_a_checkpoint_with_the_optimizer_keyed_by_index_still_resumes_exactly(tmp_path):
    """Checkpoints keep the optimizer state by parameter name (one route into one process, DDP
    and FSDP2); one written before, with ``optimizer.state_dict()``'s indices, resumes into the
    same steps as an uninterrupted run."""
    settings = ["train.steps=8", "train.checkpoint_every=4", "train.eval_every=8"]
    straight = trainer_for(tmp_path / "straight", settings)
    straight.fit()
    paused = trainer_for(tmp_path / "paused", settings)
    paused.fit(until=4)
    saved = newest_checkpoint(tmp_path / "paused" / "checkpoints")
    state = checkpoint.load_state(saved)
    assert isinstance(next(iter(state["optimizer"]["state"])), str)  # by name now
    state["optimizer"] = paused.optimizer.state_dict()  # the older layout: by index
    torch.save(state, saved / checkpoint.STATE_FILE)
    resumed = trainer_for(tmp_path / "paused", [*settings, "resume=true"])
    assert resumed.step == 4
    resumed.fit()
    expected, got = step_losses(tmp_path / "straight"), step_losses(tmp_path / "paused")
    for step in range(5, 9):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
