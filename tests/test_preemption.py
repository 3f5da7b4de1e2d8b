"""A scheduler's stop signal (SIGTERM, SIGUSR1): the run finishes its step, writes a checkpoint,
exits 75, and ``resume=true`` continues it as if it had never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenformer_mm.checkpoint_layout import newest_checkpoint
from tokenformer_mm.train.preemption import PREEMPTED_EXIT_CODE

from .engine_utils import ROOT, TINY_VISION, run, step_losses, train_command

STEPS = 40
COMMON = [
    *TINY_VISION,
    f"train.steps={STEPS}",
    "train.checkpoint_every=1000",  # the only checkpoint before the end is the stop's own
    "train.eval_every=20",
    "++model.kwargs.drop_path_rate=0.2",  # training draws from the RNG at every step
    "data.num_workers=2",  # data workers get the signal too (SLURM signals every process)
]


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "train_steps.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def signal_mid_run(command: list[str], run_dir: Path, sig: signal.Signals) -> tuple[int, str]:
    """Start ``command`` in its own process group, signal the whole group after step 10 (as
    SLURM signals every process of a job step); returns its exit code and stderr."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while steps_logged(run_dir) < 10:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no 10 steps in 240 s"
        time.sleep(0.01)
    os.killpg(process.pid, sig)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run that never stops, on ``processes`` processes, trained once for every signal."""
    runs: dict[int, Path] = {}

    def losses(processes: int) -> dict[int, float]:
        if processes not in runs:
            runs[processes] = tmp_path_factory.mktemp(f"uninterrupted-{processes}")
            run(train_command([*COMMON, f"run_dir={runs[processes]}"], processes=processes))
        return step_losses(runs[processes])

    return losses


@pytest.mark.slow
@pytest.mark.parametrize(
    "processes, sig",
    [(1, signal.SIGTERM), (2, signal.SIGTERM)],
    ids=["SIGTERM", "torchrun-SIGTERM"],
)
def test_a_stop_signal_checkpoints_and_resume_replays_the_uninterrupted_run(
    tmp_path, uninterrupted, processes, sig
):
    """Under torchrun the agent is signalled too and forwards the signal to its workers: each
    worker gets it twice within milliseconds, which is one request, not two. SIGUSR1 takes the
    same path from the handler on (the handler's own test below sends both)."""
    stopped = tmp_path / "stopped"

    code, stderr = signal_mid_run(
        train_command([*COMMON, f"run_dir={stopped}"], processes=processes), stopped, sig
    )
    saved = newest_checkpoint(stopped / "checkpoints")
    assert saved is not None, stderr[-3000:]
    step = int(saved.name[5:])
    assert 10 <= step < STEPS and steps_logged(stopped) == step  # the step it was in, finished
    assert f"{sig.name} received: stopped after step {step}, checkpoint {saved}" in stderr
    if processes == 1:  # torchrun reports its workers' exit in its own code
        assert code == PREEMPTED_EXIT_CODE, stderr[-3000:]
    else:
        assert code != 0

    run(train_command([*COMMON, f"run_dir={stopped}", "resume=true"], processes=processes))
    expected, got = uninterrupted(processes), step_losses(stopped)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected  # bit for bit: the same floats, as repr() wrote them


# SIGUSR1, then a repeat within the window, restored after; then (window 0) SIGTERM and a
# second one. One interpreter for all three.
SECOND_SIGNAL = """
import os, signal, time
from tokenformer_mm.train import preemption
for window, sig in ((5.0, signal.SIGUSR1), (0.0, signal.SIGTERM)):
    preemption.REPEAT_WINDOW_S = window
    with preemption.StopSignals(["SIGTERM", "SIGUSR1"]) as stop:
        os.kill(os.getpid(), sig)
        time.sleep(0.2)
        print(window, "first:", stop.received.name, flush=True)
        os.kill(os.getpid(), sig)
        time.sleep(0.2)
        print(window, "still running", flush=True)
    print(window, "restored:", signal.getsignal(sig) == signal.SIG_DFL, flush=True)
"""


def test_a_second_signal_exits_at_once_and_a_repeat_within_the_window_does_not():
    command = [sys.executable, "-c", SECOND_SIGNAL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGTERM, result.stderr  # the second signal killed it
    assert result.stdout.splitlines() == [
        "5.0 first: SIGUSR1",
        "5.0 still running",  # the repeat within the window was the same request
        "5.0 restored: True",
        "0.0 first: SIGTERM",  # and nothing after the second signal
    ]


def test_an_unknown_stop_signal_is_refused_naming_the_allowed_ones():
    from tokenformer_mm.train.config import validate

    from .engine_utils import compose_config

    cfg = compose_config("vision", ["train.stop_signals=[SIGTERM,SIGKILL]", "run_dir=x"])
    with pytest.raises(ValueError, match=r"train.stop_signals must be a subset of .*SIGKILL"):
        validate(cfg)
