"""Faults a cluster brings, probed as a user meets them (issue 26, item 7): a disk that fills
during a checkpoint, a second run started in the same run directory, an interrupted shard
write. Each loses nothing and says what happened."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import pytest

from tokenformer_mm.checkpoint_layout import newest_checkpoint
from tokenformer_mm.shards import write_shards
from tokenformer_mm.train import checkpoint
from tokenformer_mm.train.run_dir import claim_run_dir
from tokenformer_mm.vision.sources import digits_samples, ensure_digits_shards

from .engine_utils import ROOT, TINY_VISION, fit_here, run, train_command


@pytest.mark.slow
def test_a_disk_that_fills_during_a_checkpoint_stops_the_run_keeping_the_last_one(tmp_path):
    """A file-size limit makes the writes of the grown model's checkpoint fail (EFBIG), as a
    full disk does (ENOSPC): before, a traceback and a half-written ``.tmp`` folder."""
    run_dir = tmp_path / "run"
    overrides = [*TINY_VISION, "train.steps=4", "train.checkpoint_every=2", f"run_dir={run_dir}"]
    overrides.append("growth.schedule=[{step: 3, factor: 2}]")  # step 4's checkpoint is bigger

    def limit_file_size() -> None:  # between the two checkpoints' sizes (~250 KB, ~460 KB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    ensure_digits_shards()  # the data, built (if not yet) before the disk "fills"

    full = subprocess.run(
        train_command(overrides), cwd=ROOT, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert full.returncode != 0
    assert "the checkpoint of step 4 could not be written" in full.stderr, full.stderr[-3000:]
    assert "step_00000002, is intact" in full.stderr
    ckpt_dir = run_dir / "checkpoints"
    assert [p.name for p in ckpt_dir.iterdir()] == ["step_00000002"]  # no .tmp left
    assert checkpoint.damage(ckpt_dir / "step_00000002") is None

    run(train_command([f"run_dir={run_dir}", "resume=true"]))  # space freed: it continues
    assert newest_checkpoint(ckpt_dir).name == "step_00000004"


@pytest.mark.slow
def test_a_second_run_in_the_same_run_dir_is_refused_while_the_first_runs(tmp_path):
    """Before: both trained, writing each other's checkpoints and metrics (a job requeued while
    its first attempt still runs, the same command started twice)."""
    run_dir = tmp_path / "run"
    overrides = [
        *TINY_VISION,
        "train.steps=100000",
        "train.checkpoint_every=100000",
    ]  # until signalled
    command = train_command([*overrides, f"run_dir={run_dir}"])
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run_dir / "train_steps.csv").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    second = subprocess.run(
        train_command([f"run_dir={run_dir}", "resume=true"]),
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert second.returncode != 0
    assert "is in use by another run that is still running" in second.stderr, second.stderr
    first.send_signal(signal.SIGTERM)  # the first stops cleanly; now the run dir is free
    assert first.wait(timeout=120) == 75
    with claim_run_dir(run_dir):  # what the next start takes first
        pass


@pytest.mark.slow
def test_a_resume_half_a_second_after_kill_9_gets_the_run_dir(tmp_path):
    """Before: the DataLoader workers, forked while the main process held the lock, kept it
    until their watchdog noticed their parent was gone (measured 4.9 s), and a resume started
    in that window (a supervisor's restart) was refused as "in use by another run"."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = f"""
import time
from pathlib import Path
import torch
from tokenformer_mm.train.run_dir import claim_run_dir
with claim_run_dir(Path({str(run_dir)!r})):
    loader = torch.utils.data.DataLoader(
        range(1000), num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    batches = iter(loader)
    next(batches)  # the workers run, forked after the lock was taken
    print("ready", flush=True)
    time.sleep(120)
"""
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert process.stdout.readline().strip() == "ready"
    with pytest.raises(ValueError, match="is in use by another run"), claim_run_dir(run_dir):
        pass  # the run itself still holds it
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    with claim_run_dir(run_dir):  # its workers may still live; the lock is free
        pass


class Interrupted(Exception):
    pass


def test_an_interrupted_shard_write_leaves_no_partial_split_and_the_next_write_completes(
    tmp_path,
):
    """Before: the shards finished before the interruption were visible, without an
    ``_info.json`` entry, and a pattern read them as the whole split."""

    def interrupted_after(n: int):
        for index, sample in enumerate(digits_samples("val")):
            if index == n:
                raise Interrupted  # Ctrl-C, a killed job
            yield sample

    with pytest.raises(Interrupted):
        write_shards(interrupted_after(250), tmp_path, "val", samples_per_shard=100)
    assert not list(tmp_path.glob("val-*.tar")) and not (tmp_path / "_info.json").exists()

    written = write_shards(digits_samples("val"), tmp_path, "val", samples_per_shard=100)
    assert len(written) == 4 and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_a_run_resumed_on_another_number_of_processes_continues_and_says_what_it_skips(tmp_path):
    """Each rank's data position belongs to its world size: resumed on 2 processes, a 1-process
    run continues from its step (weights, optimizer, schedule) and names the epoch it skips."""
    run_dir = tmp_path / "run"
    fit_here([*TINY_VISION, "train.steps=4", "train.checkpoint_every=2", f"run_dir={run_dir}"])
    resumed = run(
        train_command([f"run_dir={run_dir}", "resume=true", "train.steps=6"], processes=2)
    )
    said = resumed.stdout + resumed.stderr  # the log goes to stdout
    assert "the rest of epoch 0 is skipped and the data restarts at epoch 1" in said
    assert newest_checkpoint(run_dir / "checkpoints").name == "step_00000006"


def test_the_default_run_dir_is_one_folder_for_every_rank_of_a_torchrun_launch(monkeypatch):
    """Before: each rank resolved ``${now:...}`` itself, seconds apart, so the ranks of one
    launch could name different folders (FSDP2's ranks write their shards into theirs)."""
    from .engine_utils import compose_config

    names = set()
    for rank, delay in ((0, 0.0), (1, 1.1)):  # a rank that starts a second later
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-7")
        time.sleep(delay)
        names.add(compose_config("vision", []).run_dir)
    (name,) = names
    assert name.startswith("runs/vision/") and name.endswith("_launch-7")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("WORLD_SIZE", "1")
    alone = compose_config("vision", []).run_dir
    assert time.strptime(alone.split("/")[-1], "%Y-%m-%d_%H-%M-%S")  # one process: the time
