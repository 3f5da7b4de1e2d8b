"""What every benchmark shares: the report entry, interleaved timing, devices, runs in parallel."""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]


REPORT = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def record(
    title: str, rows: list[dict[str, object]], notes: str = "", report: Path = REPORT
) -> None:
    """Print a markdown table and append it, with how it was made, to ``report``."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    table = "\n".join(lines)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    entry = (
        f"\n## {title}\n\n"
        f"- command: `{command}`\n- machine: {machine()}\n"
        f"- date: {datetime.date.today().isoformat()}\n\n{table}\n"
        + (f"\n{notes}\n" if notes else "")
    )
    print(entry)
    report.parent.mkdir(parents=True, exist_ok=True)
    if not report.exists():
        report.write_text("# Benchmarks\n\nMeasured by `scripts/bench.py`; newest entries last.\n")
    with report.open("a") as f:
        f.write(entry)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each variant's call, the variants run in turn (rotating the order).

    Interleaving makes a noisy, shared machine slow every variant alike, so their ratios hold.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: float(np.median(times)) for name, times in seconds.items()}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mixed_precision(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, as training there runs; fp32 on CPU."""
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


def precision_note(device: torch.device) -> str:
    return "bf16 autocast" if device.type == "cuda" else "fp32"


def adamw_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training step (backward and an AdamW update): the unit the model benchmarks time."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def millions_of_params(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"


def throughput(batches: Iterable, count: Callable[[object], int], warmup: int) -> float:
    """Items per second over ``batches``, after ``warmup`` batches (worker start-up excluded)."""
    seen, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            start, seen = time.perf_counter(), 0
        seen += count(batch)
    if start is None:
        raise ValueError(f"only {i + 1} batches, fewer than the {warmup} warm-up batches")
    return seen / (time.perf_counter() - start)


def run_in_parallel(
    commands: list[list[str]],
    logs: list[Path],
    jobs: int,
    desc: str,
    on_done: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Run the commands, ``jobs`` at a time with one share of the cores each; their seconds.
    ``on_done(i, seconds)`` is called as each one finishes (a study records it at once)."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))
    pending = list(range(len(commands)))
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    seconds = [0.0] * len(commands)
    with tqdm(total=len(commands), desc=desc) as bar:
        while pending or running:
            while pending and len(running) < jobs:
                i = pending.pop(0)
                with logs[i].open("w") as log:
                    process = subprocess.Popen(
                        commands[i], stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                running[i] = (process, time.perf_counter())
            for i, (process, start) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[i]
                if process.returncode != 0:
                    tail = logs[i].read_text()[-3000:]
                    raise RuntimeError(f"{shlex.join(commands[i])} failed:\n{tail}")
                seconds[i] = time.perf_counter() - start
                if on_done is not None:
                    on_done(i, seconds[i])
                bar.update()
            time.sleep(1)
    return seconds


def run_variants(
    args: argparse.Namespace, tmp: str, command: Callable[..., list[str]], desc: str
) -> list[tuple[str, int, Path, float]]:
    """Every (variant, seed) of ``args`` as one process (``command(args, variant, seed, out)``),
    ``args.jobs`` at a time; returns (variant, seed, output folder, seconds) per run."""
    runs = [(variant, seed) for seed in args.seeds for variant in args.variants]
    outputs = [Path(tmp) / f"run{i}" for i in range(len(runs))]
    commands = [command(args, v, s, o) for (v, s), o in zip(runs, outputs, strict=True)]
    logs = [o.with_suffix(".log") for o in outputs]
    seconds = run_in_parallel(commands, logs, args.jobs, desc)
    return [(v, s, o, t) for (v, s), o, t in zip(runs, outputs, seconds, strict=True)]


def variant_settings(variant: str, settings: list[str]) -> dict[str, object]:
    """A variant's ``key=value`` settings as keyword arguments, parsed as timm's --model-kwargs
    parses them: Python literals (numbers, None) as such, other text as text."""
    parsed: dict[str, object] = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise ValueError(f"variant {variant!r}: {setting!r} is not key=value")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    return parsed
