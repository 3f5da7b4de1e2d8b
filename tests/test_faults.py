"""Mistakes a user makes that used to give a silent wrong result or an error without the file
or the fix (issue 15): each now does the right thing or stops, naming the value and the fix."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tokenformer_mm.shards import write_shards
from tokenformer_mm.train import Trainer, build_task
from tokenformer_mm.vision.sources import digits_samples

from .engine_utils import TINY_VISION, compose_config


def trainer_for(run_dir, overrides):
    cfg = compose_config("vision", [*TINY_VISION, f"run_dir={run_dir}", *overrides])
    return Trainer(cfg, build_task(cfg), run_dir)


@pytest.mark.parametrize("given", ["train_shards", "val_shards"])
def test_one_shard_pattern_without_the_other_is_an_error_not_the_embedded_set(tmp_path, given):
    """Before: train_shards alone (matching nothing, or real shards) trained on the digits."""
    write_shards(digits_samples("train"), tmp_path / "shards", "train", 500)
    pattern = str(tmp_path / "shards" / "train-*.tar")
    with pytest.raises(ValueError, match=rf"data.{given}=.* is set but data.* is not: give both"):
        trainer_for(tmp_path / "run", [f"data.{given}={pattern}"])
    assert not (tmp_path / "run" / "train_steps.csv").exists()


def test_make_shards_refuses_a_folder_with_shards_and_overwrite_replaces_them(tmp_path, capsys):
    """Before: old shards stayed beside the new ones and a train-*.tar pattern read both."""
    from scripts.make_shards import main

    out = tmp_path / "out"
    main(["digits", str(out), "--samples-per-shard", "100"])
    before = sorted(p.name for p in out.glob("*.tar"))
    with pytest.raises(SystemExit):  # argparse's error: the message names the folder and flag
        main(["digits", str(out), "--samples-per-shard", "1000"])
    assert f"{out} already holds 15 'train' shards" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.tar")) == before  # nothing written or removed
    with pytest.raises(ValueError, match=r"already holds 15 'train' shards .*--overwrite"):
        write_shards(digits_samples("train"), out, "train", 1000)
    main(["digits", str(out), "--samples-per-shard", "1000", "--overwrite"])
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
        "val-000000.tar",
    ]
    info = json.loads((out / "_info.json").read_text())["splits"]
    assert sum(info["train"]["shard_lengths"]) + sum(info["val"]["shard_lengths"]) == 1797


@pytest.mark.slow
def test_resume_skips_a_truncated_checkpoint_names_it_and_replays_from_the_one_before(
    tmp_path, caplog
):
    """Before: a bare parser error with no file named. Now the newest intact checkpoint is
    resumed, with a warning naming the damaged file; the run ends as an uninterrupted one."""
    from tokenformer_mm.train import checkpoint

    from .engine_utils import step_losses

    common = ["train.steps=8", "train.checkpoint_every=4", "train.keep_checkpoints=3"]
    reference = trainer_for(tmp_path / "reference", common)
    reference.fit()
    run = trainer_for(tmp_path / "run", common)
    run.fit(until=8)
    newest = tmp_path / "run" / "checkpoints" / "step_00000008"
    for name in ("state.pt", "model.safetensors"):  # each file, cut short (a disk-full write)
        file = newest / name
        intact = file.read_bytes()
        file.write_bytes(intact[: len(intact) // 2])
        assert checkpoint.damage(newest).startswith(f"{file} cannot be read")
        if name == "state.pt":
            file.write_bytes(intact)
    with caplog.at_level("WARNING"):
        resumed = trainer_for(tmp_path / "run", [*common, "resume=true"])
    assert resumed.step == 4
    assert f"{file} cannot be read" in caplog.text and "resuming from step_00000004" in caplog.text
    resumed.fit()
    ours, expected = step_losses(tmp_path / "run"), step_losses(tmp_path / "reference")
    assert [ours[s] for s in range(5, 9)] == pytest.approx([expected[s] for s in range(5, 9)])
    for path in (tmp_path / "run" / "checkpoints").iterdir():  # every checkpoint damaged
        (path / "state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no checkpoint of this run can be read: .*step_0000000"):
        trainer_for(tmp_path / "run", [*common, "resume=true"])


def test_a_resume_reads_each_checkpoint_file_once(tmp_path, monkeypatch):
    """Before: every file was loaded whole to check it, then again to use it (for the 1.5B
    model about 2 x 18 GB a rank); now the check reads each file's index alone."""
    import safetensors.torch

    trainer_for(tmp_path / "run", ["train.steps=2", "train.checkpoint_every=2"]).fit()
    loaded = []
    for module, name in ((torch, "load"), (safetensors.torch, "load_file")):
        original = getattr(module, name)

        def counted(path, *args, original=original, **kwargs):
            loaded.append(Path(path).name)
            return original(path, *args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    trainer_for(tmp_path / "run", ["train.steps=4", "train.checkpoint_every=2", "resume=true"])
    assert sorted(loaded) == ["model.safetensors", "state.pt"]


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    """Before: resume=true on an empty or misspelt run dir trained from scratch (a warning)."""
    with pytest.raises(ValueError, match=r"resume=true, but .*typo-run/checkpoints holds no"):
        trainer_for(tmp_path / "typo-run", ["resume=true"])
    assert not (tmp_path / "typo-run" / "train_steps.csv").exists()


@pytest.mark.slow
def test_a_refused_start_leaves_the_runs_record_untouched(tmp_path):
    """Before: Hydra rewrote .hydra/config.yaml before the Trainer refused the start, and
    evaluate.py then rebuilt the wrong run."""
    from .engine_utils import train_command

    run_dir = tmp_path / "run"
    trainer_for(run_dir, ["train.steps=2"]).fit()
    record = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = subprocess.run(
        train_command(
            [*TINY_VISION, "train.steps=4", "++model.kwargs.depth=3", f"run_dir={run_dir}"]
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "pass resume=true" in refused.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == record
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.train.steps == 2 and saved.model.kwargs.depth == 2


def test_an_unwritable_run_dir_is_named_before_any_work(tmp_path):
    """Before: Hydra's 'Unable to configure handler file'. (A file where the folder should be:
    unwritable even for root, who ignores permission bits.)"""
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(ValueError, match=r"run_dir=.*blocked/run' cannot be written .*permissions"):
        trainer_for(tmp_path / "blocked" / "run", [])


def test_an_out_of_range_label_names_the_label_and_the_class_count_at_start_up(tmp_path):
    """Before: an IndexError from the loss, mid-training."""
    shards = tmp_path / "shards"
    for split in ("train", "val"):
        write_shards(digits_samples(split), shards, split, 1000)
    patterns = [f"data.{s}_shards={shards}/{s}-*.tar" for s in ("train", "val")]
    with pytest.raises(ValueError, match=r"label [5-9] in a batch, but data.num_classes=5: set"):
        trainer_for(tmp_path / "run", [*patterns, "data.num_classes=5"])


def test_a_misspelt_model_kwarg_is_named_with_the_config_key(tmp_path):
    """Before: timm's bare TypeError from the model's constructor."""
    with pytest.raises(
        ValueError, match=r"keyword it does not take .*embed_dimm.*check model.kwargs"
    ):
        trainer_for(tmp_path / "run", ["++model.kwargs.embed_dimm=64"])


def _digits_shards(root, per_shard=500):
    for split in ("train", "val"):
        write_shards(digits_samples(split), root, split, per_shard)
    return [f"data.{s}_shards={root}/{s}-*.tar" for s in ("train", "val")]


def _keep_first_samples(shard, samples):
    """Rewrite ``shard`` with only its first ``samples`` samples: a clean tar boundary, so the
    tar reader sees no damage (a copy cut short, or a writer that died between samples)."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    keys = list(dict.fromkeys(m.name.split(".")[0] for m, _ in members))[:samples]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, data in members:
            if member.name.split(".")[0] in keys:
                tar.addfile(member, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())


@pytest.mark.slow
def test_a_shard_shorter_than_its_info_json_is_named_counted_and_strict_stops(tmp_path, caplog):
    """Before: 1,304 of 1,437 samples read and "0 of 8 shards damaged"."""
    from tokenformer_mm.vision.data import image_eval_loader

    _digits_shards(tmp_path)
    shard = tmp_path / "train-000001.tar"
    _keep_first_samples(shard, 367)  # of 500
    loader = image_eval_loader(str(tmp_path / "train-*.tar"), 64, 16, num_workers=0)
    with caplog.at_level("WARNING"):
        count = sum(len(b["label"]) for b in loader)
    assert count == 1437 - 133
    assert f"shard {shard} yielded 367 of the 500 samples its _info.json declares" in caplog.text
    assert "0 of 3 shards damaged; 1 shards short of their _info.json count by 133" in (
        loader.dataset.report()
    )
    patterns = [f"data.{s}_shards={tmp_path}/{s}-*.tar" for s in ("train", "val")]
    write_shards(digits_samples("val"), tmp_path / "short", "val", 500)
    _keep_first_samples(tmp_path / "short" / "val-000000.tar", 300)  # of 360: validation too
    short_val = f"data.val_shards={tmp_path}/short/val-*.tar"
    trainer = trainer_for(
        tmp_path / "run", [patterns[0], short_val, "train.steps=30", "train.eval_every=30"]
    )
    trainer.fit()  # 30 x 16 samples: past the short shard
    assert trainer.eval_rows[-1]["data/missing_samples"] == 133
    assert trainer.eval_rows[-1]["val_data/missing_samples"] == 60  # one evaluation
    assert trainer.eval_rows[-1]["val_data/short_shards"] == 1
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "data/short_shards" in header and "val_data/skipped_samples" in header
    strict = trainer_for(
        tmp_path / "strict", [*patterns, "train.steps=30", "train.strict_data=true"]
    )
    with pytest.raises(ValueError, match=r"train-000001.tar yielded 367 of the 500 .*strict_data"):
        strict.fit()


@pytest.mark.parametrize("split", ["train", "val"])
def test_all_corrupt_shards_say_what_was_read(tmp_path, split):
    """Before: a bare StopIteration (validation) or a batch-size hint (training)."""
    patterns = _digits_shards(tmp_path)
    for shard in tmp_path.glob(f"{split}-*.tar"):
        shard.write_bytes(b"\0" * 10 + shard.read_bytes()[10:])  # every tar header broken
    message = (
        "validation loader yields no sample"
        if split == "val"
        else "training loader yields no batch"
    )
    with pytest.raises(
        ValueError, match=rf"{message}.* (\d) of \1 shards damaged.*data.{split}_shards"
    ):
        trainer_for(tmp_path / "run", patterns).fit()


def test_timm_loading_never_drops_a_trained_head_or_leaves_blocks_random(tmp_path, caplog):
    """Before: the 10-class head of our checkpoint was dropped (or a bare missing-keys error),
    and a deeper model loaded a shallower checkpoint with its extra blocks random (INFO)."""
    import safetensors.torch
    import timm

    name = "tokenformer_micro_patch4_32"
    source = timm.create_model(name, num_classes=10).eval()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    overlay = dict(file=str(path))
    fix = r"pretrained_cfg_overlay=dict\(file=..., num_classes=10\)"
    with pytest.raises(ValueError, match=rf"head has 10 classes, the model 1000 .*{fix}"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    with pytest.raises(ValueError, match=rf"10-class head fits the model, but timm drops .*{fix}"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)
    overlay["num_classes"] = 10
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    with caplog.at_level("WARNING"):  # fine-tuning on purpose: a new head, said at WARNING
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3)
    assert "head has 10 classes, the model 3" in caplog.text
    with pytest.raises(
        ValueError, match=r"checkpoint has 4 blocks under 'blocks', the model 6: .*depth=4"
    ):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, depth=6)


def test_timm_loading_names_a_wrong_file_and_takes_a_run_or_checkpoint_directory(tmp_path):
    """Before: timm's bare FileNotFoundError() for a wrong path, and for any directory."""
    import safetensors.torch
    import timm

    name, x = "tokenformer_micro_patch4_32", torch.randn(2, 3, 32, 32)
    run = tmp_path / "runs" / "vision" / "run"
    for step in (4, 8):  # as the engine lays a run out; the newest checkpoint is loaded
        (run / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
        source = timm.create_model(name, num_classes=10).eval()
        weights = run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"
        safetensors.torch.save_file(source.state_dict(), weights)
    (run / "checkpoints" / "step_00000012.tmp").mkdir()  # a checkpoint being written
    for given in (run, run / "checkpoints", weights.parent, weights):
        overlay = dict(file=str(given), num_classes=10)
        loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), source(x)), given
    expected = r"pass a checkpoint's file \(runs/vision/<run>/checkpoints/step_00000800/model"
    for wrong, problem in [(tmp_path / "typo.safetensors", "does not exist"), (tmp_path, "is a")]:
        overlay = dict(file=str(wrong))
        with pytest.raises(FileNotFoundError, match=rf"file='{wrong}'\) {problem}.*{expected}"):
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    weights.unlink()  # a sharded checkpoint (train.parallel=fsdp) has no model.safetensors
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors .*python scripts/export"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(run)))


def _nan_at(trainer, calls):
    """The task's real loss, made NaN at its training batches numbered ``calls`` (corrupt ones)."""
    loss_of, seen = trainer.task.training_loss, []

    def training_loss(model, batch):
        seen.append(1)
        loss = loss_of(model, batch)
        return loss * float("nan") if len(seen) in calls else loss

    trainer.task.training_loss = training_loss


def _finite(path):
    import safetensors.torch

    return all(torch.isfinite(t).all() for t in safetensors.torch.load_file(path).values())


def test_a_nan_loss_stops_the_run_there_naming_the_checkpoint_to_resume_from(tmp_path):
    from tokenformer_mm.train.nonfinite import NonFiniteError

    run_dir = tmp_path / "run"
    trainer = trainer_for(run_dir, ["train.steps=6", "train.checkpoint_every=2"])
    _nan_at(trainer, calls={3})
    newest = run_dir / "checkpoints" / "step_00000002"
    with pytest.raises(NonFiniteError, match=rf"at step 3: the loss is nan.*{newest}"):
        trainer.fit()
    assert trainer.step == 2 and sorted(p.name for p in newest.parent.iterdir()) == [newest.name]
    assert _finite(newest / "model.safetensors")


def test_with_skip_a_nan_step_makes_no_update_is_counted_and_too_many_in_a_row_stop(tmp_path):
    from tokenformer_mm.train.nonfinite import NonFiniteError

    steps = ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=3"]
    skip = [*steps, "train.nonfinite=skip", "train.nonfinite_patience=2"]
    trainer = trainer_for(tmp_path / "run", skip)
    _nan_at(trainer, calls={2})
    trainer.fit()
    assert [row["nonfinite/skipped"] for row in trainer.eval_rows] == [1, 1]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert _finite(tmp_path / "run" / "checkpoints" / "step_00000006" / "model.safetensors")
    assert trainer.state.state_dict()["nonfinite_skipped"] == 1  # checkpointed: a resume keeps it
    stalled = trainer_for(tmp_path / "run2", skip)
    _nan_at(stalled, calls={2, 3})
    with pytest.raises(NonFiniteError, match=r"at step 3: .* step 2 of such steps in a row"):
        stalled.fit()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_that_diverges_exits_non_zero_and_keeps_its_finite_checkpoints(tmp_path, processes):
    """Issue 26's measured case: lr 1e4 without warm-up, a checkpoint every step; under torchrun
    every rank stops at the same step (none waits on a collective the others left)."""
    from .engine_utils import ROOT, train_command

    overrides = [*TINY_VISION, "optim.lr=1e4", "optim.warmup_steps=0", "train.steps=40"]
    overrides += ["train.checkpoint_every=1", "train.keep_checkpoints=2", f"run_dir={tmp_path}"]
    result = subprocess.run(
        train_command(overrides, processes=processes),
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "final validation" not in result.stdout
    assert "training diverged at step" in result.stderr, result.stderr[-2000:]
    kept = sorted((tmp_path / "checkpoints").iterdir())
    assert kept and all(_finite(path / "model.safetensors") for path in kept)
    assert str(kept[-1]) in result.stderr  # the checkpoint to resume from, named


def _train_script(monkeypatch, overrides):
    """scripts/train.py run in this process as the command line runs it (Hydra and its
    callbacks); returns its exit's message."""
    import runpy
    import sys

    from .engine_utils import ROOT

    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # pytest keeps the logging
    monkeypatch.setattr(sys, "argv", ["train.py", "--config-name", "vision", *overrides, *quiet])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "train.py"), run_name="__main__")
    return stop.value.code


def test_a_run_dir_that_cannot_be_made_is_one_line_naming_it(tmp_path, monkeypatch):
    """Before: Hydra's traceback from mkdir, before our own check could run."""
    (tmp_path / "blocked").write_text("a file, not a folder")
    cases = [
        str(tmp_path / "blocked" / "run"),
        *(["/proc/x"] if Path("/proc/self").is_dir() else []),
    ]
    for run_dir in cases:
        message = _train_script(monkeypatch, [f"run_dir={run_dir}"])
        assert message.startswith(f"error: run_dir={run_dir!r} cannot be made or written (")
        assert "choose a run_dir in a folder you can write" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["blocked"]


def test_a_refused_start_removes_the_folders_it_made_and_nothing_a_user_made(tmp_path, monkeypatch):
    """Before: every refused start left an empty runs/vision/<date_time> behind (Hydra makes
    run_dir before main), and its error was a traceback."""
    monkeypatch.chdir(tmp_path)
    bad = "train.steps=0"
    assert _train_script(monkeypatch, [bad]) == "error: train.steps must be positive, got 0"
    assert list(tmp_path.iterdir()) == []  # runs/, runs/vision/ and the run's folder: all gone
    (tmp_path / "runs" / "vision").mkdir(parents=True)  # a user's folders, empty
    (tmp_path / "mine").mkdir()
    _train_script(monkeypatch, [bad])
    _train_script(monkeypatch, [bad, "run_dir=mine"])
    _train_script(monkeypatch, [bad, "run_dir=mine/a/b"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "mine",
        "runs",
        "runs/vision",
    ]


def test_evaluate_ema_on_a_run_without_ema_names_the_checkpoint_and_the_fix(tmp_path, capsys):
    """Before: FileNotFoundError's traceback, "no weights at .../ema.safetensors"."""
    from scripts.evaluate import main

    step = tmp_path / "run" / "checkpoints" / "step_00000001"  # as a run without EMA leaves it
    step.mkdir(parents=True)
    for name in ("model.safetensors", "state.pt"):
        (step / name).write_bytes(b"")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--ema"])
    error = capsys.readouterr().err
    assert "step_00000001 has no EMA weights (ema.safetensors): the run was trained" in error
    assert "drop --ema, or train with train.ema_decay=" in error
    with pytest.raises(SystemExit):  # a path that is no run: one line too
        main([str(tmp_path / "nowhere")])
    assert "nowhere is neither a checkpoint directory nor a run" in capsys.readouterr().err


SCRIPTS_WITH_HELP = [
    "bench",
    "bench_lm_grid",
    "bench_timm_grid",
    "convert_official",
    "evaluate",
    "export",
    "generate",
    "growth_study",
    "make_shards",
    "study_branch_scale",
    "study_coord_check",
    "study_lr_transfer",
    "timm_model_tests",
    "train_tokenizer",
]  # not train.py: its --help is Hydra's own


def test_every_scripts_help_shows_its_docstring_line_for_line(capsys, monkeypatch):
    """Before: argparse reflowed the examples into one paragraph, a few scripts showed the first
    line only, and a backslash at a line's end joined two example lines in the docstring."""
    import ast
    import runpy

    from .engine_utils import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as a script runs: its benchmarks/
    for name in SCRIPTS_WITH_HELP:
        path = ROOT / "scripts" / f"{name}.py"
        source = path.read_text()
        node = ast.parse(source).body[0].value  # the docstring, as written in the file
        written = ast.get_source_segment(source, node)[3:-3].replace("\\\\", "\\")
        with pytest.raises(SystemExit):
            runpy.run_path(str(path), run_name="help")["main"](["--help"])
        shown = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
        for line in written.strip().splitlines():
            assert line.rstrip() in shown, f"scripts/{name}.py --help: {line!r}"
    with pytest.raises(SystemExit):  # generate.py says what each sampling option does
        runpy.run_path(str(ROOT / "scripts" / "generate.py"), run_name="help")["main"](["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for said in (
        "--temperature TEMPERATURE divides the logits",
        "0 is greedy, always the likeliest token (default: 0.8)",
        "--top-k TOP_K draw only among the k likeliest tokens (default: every token)",
        "--top-p TOP_P nucleus sampling",
        "--seed SEED seed of the sampling: the same seed, model and options give the same",
        "--num-samples NUM_SAMPLES how many samples to draw from the prompt",
    ):
        assert said in shown


def test_a_value_error_from_a_bug_mid_run_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """Before: scripts/train.py turned every ValueError raised during training into a one-line
    exit, a library bug's too; now only an ``InputError`` (what a user gave) is one line."""

    def broken(self):
        raise ValueError("a bug in the training step")

    monkeypatch.setattr(Trainer, "_train_step", broken)
    overrides = [*TINY_VISION, "train.steps=2"]
    assert _train_script(monkeypatch, [*overrides, f"run_dir={tmp_path / 'a'}"]) == 1  # Hydra's
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and "ValueError: a bug in the training step" in stderr
    message = _train_script(monkeypatch, [*overrides, "optim.warmup_steps=-1", "run_dir=b"])
    assert message == "error: optim.warmup_steps must be >= 0, got -1"  # the command's mistake
