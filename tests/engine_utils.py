"""Helpers for the tests that train: small configs composed like the CLI composes them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from tokenformer_mm.train import register_schemas

ROOT = Path(__file__).resolve().parent.parent

# A model and schedule small enough for a test, big enough to learn the digits.
TINY_VISION = [
    "model.img_size=16",
    "++model.kwargs.embed_dim=32",
    "++model.kwargs.depth=2",
    "++model.kwargs.num_heads=2",
    "++model.kwargs.qkv_tokens=32",
    "++model.kwargs.ffn_tokens=64",
    "++model.kwargs.patch_size=4",
    "train.batch_size=16",
    "train.log_every=1",
    "optim.warmup_steps=2",
    "data.num_workers=1",
]


def compose_config(name: str, overrides: list[str]):
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides)


def fit_here(overrides: list[str], config: str = "vision") -> dict:
    """The run ``scripts/train.py`` would make of ``overrides`` (``run_dir=`` among them), in
    this process: for tests whose subject is what a run wrote, not the command line."""
    from tokenformer_mm.train import Trainer, build_task

    cfg = compose_config(config, overrides)
    return Trainer(cfg, build_task(cfg), Path(cfg.run_dir)).fit()


def train_command(overrides: list[str], config: str = "vision", processes: int = 1) -> list[str]:
    """``scripts/train.py`` as a user runs it; ``processes`` > 1: under torchrun (gloo on CPU)."""
    launcher = [sys.executable]
    if processes > 1:  # --standalone picks a free port
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
        ]
    return [*launcher, str(ROOT / "scripts" / "train.py"), "--config-name", config, *overrides]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_until_killed(command: list[str], checkpoint_dir: Path, timeout: float = 180) -> None:
    """Run ``command`` (a training run) and SIGKILL it as soon as ``checkpoint_dir`` exists;
    fails if the run ends first. Under torchrun the agent is killed; its workers die with it."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while not checkpoint_dir.exists():
        assert process.poll() is None, f"the run ended before {checkpoint_dir.name}"
        assert time.time() < deadline, f"no {checkpoint_dir.name} after {timeout} s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def step_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "train_steps.csv").read_text().splitlines()[1:]
    return {int(line.split(",")[0]): float(line.split(",")[2]) for line in lines}
