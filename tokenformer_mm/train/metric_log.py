"""What a run writes about itself: CSV files, TensorBoard scalars, growth events and a plot.

A run directory holds ``train_steps.csv`` (loss, lr, gradient norm per step), ``metrics.csv``
(a row per evaluation, a column per metric), ``growth.jsonl`` (one line per growth event),
``tensorboard/`` when TensorBoard is installed, and ``metrics.png``. Only the main process
writes; the others keep the rows in memory, so every rank returns the same summary.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

STEPS_FILE = "train_steps.csv"
METRICS_FILE = "metrics.csv"
GROWTH_FILE = "growth.jsonl"
CONFIG_FILE = Path(".hydra") / "config.yaml"  # the composed config, as Hydra laid it out
PLOT_FILE = "metrics.png"


class MetricLog:
    """The run's record under ``run_dir``; ``write=False`` (ranks other than 0) writes nothing."""

    def __init__(self, run_dir: Path, write: bool) -> None:
        self.run_dir, self.write = Path(run_dir), write
        self.eval_rows: list[dict[str, Any]] = []
        self._tensorboard: Any = None
        self._tensorboard_tried = False

    def resume(self, step: int) -> None:
        """Continue a killed run at checkpoint ``step``: rows logged after it are trained again."""
        self.eval_rows = [r for r in read_csv(self.run_dir / METRICS_FILE) if r["step"] <= step]
        path = self.run_dir / STEPS_FILE
        if self.write and path.exists():
            lines = path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
            path.write_text("".join(kept))

    def log_step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float) -> None:
        if not self.write:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / STEPS_FILE
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "loss", "lr", "grad_norm"])
            writer.writerow([step, epoch, repr(loss), repr(lr), repr(grad_norm)])

    def log_evaluation(self, row: dict[str, Any]) -> None:
        """One evaluation (``step`` plus named scalars): metrics.csv rewritten, TensorBoard."""
        self.eval_rows.append(row)
        if not self.write:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(key for r in self.eval_rows for key in r))
        with (self.run_dir / METRICS_FILE).open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.eval_rows)
        board = self._board()
        if board is not None:
            for key, value in row.items():
                if key != "step":
                    board.add_scalar(key, value, row["step"])

    def log_growth(self, events: Sequence[dict[str, Any]]) -> None:
        """``growth.jsonl`` rewritten whole: a resumed run replaces what its killed run logged."""
        if self.write:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps(event) + "\n" for event in events]
            (self.run_dir / GROWTH_FILE).write_text("".join(lines))

    def plot(self, growth_steps: Sequence[int]) -> Path:
        path = self.run_dir / PLOT_FILE
        if self.write:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            plot_metrics(self.run_dir, growth_steps)
        return path

    def _board(self) -> Any:
        if not self._tensorboard_tried:
            self._tensorboard_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                return None
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tensorboard


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a run's CSV file as the numbers they were written from: ``9`` an int, ``9.0`` a
    float, so a resumed run rewrites its earlier rows byte for byte; missing file: no rows."""
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [{k: _number(v) for k, v in row.items() if v != ""} for row in rows]


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def plot_metrics(run_dir: Path, growth_steps: Sequence[int]) -> Path:
    """``metrics.png``: training loss per step and every validation metric, growth marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = read_csv(run_dir / STEPS_FILE)
    evals = read_csv(run_dir / METRICS_FILE)
    val_keys = sorted({k for row in evals for k in row if k.startswith("val/")})
    fig, axes = plt.subplots(1, 1 + len(val_keys), figsize=(4.5 * (1 + len(val_keys)), 3.5))
    axes = list(axes) if len(val_keys) else [axes]
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8)
    axes[0].set_title("train/loss")
    for ax, key in zip(axes[1:], val_keys, strict=True):
        ax.plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r], "o-")
        ax.set_title(key)
    for ax in axes:
        ax.set_xlabel("step")
        for step in growth_steps:
            ax.axvline(step, color="gray", ls="--", lw=0.8)
    fig.tight_layout()
    path = run_dir / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class ProgressLine:
    """The progress bar of a run (rank 0): the mean loss, lr and throughput of the last
    ``every`` steps, refreshed every ``every`` steps."""

    def __init__(
        self, until: int, step: int, every: int, unit: str, flops_per_item: float, show: bool
    ) -> None:
        self.bar = tqdm(
            total=until, initial=step, disable=not show, unit="step", dynamic_ncols=True
        )
        self.every, self.unit, self.flops_per_item = every, unit, flops_per_item
        self.losses: list[float] = []
        self.items, self.since = 0, time.perf_counter()

    def update(self, step: int, loss: float, items: int, lr: float, final: bool) -> None:
        """One step of ``items`` (all ranks) at ``loss``."""
        self.losses.append(loss)
        self.items += items
        if step % self.every == 0 or final:
            rate = self.items / (time.perf_counter() - self.since)
            recent = self.losses[-self.every :]
            self.bar.set_postfix(
                loss=f"{sum(recent) / len(recent):.4f}",
                lr=f"{lr:.2e}",
                **{f"{self.unit}/s": f"{rate:.0f}"},
                GFLOPs=f"{rate * self.flops_per_item / 1e9:.1f}",
            )
            self.items, self.since = 0, time.perf_counter()
        self.bar.update(1)

    def window_loss(self) -> float:
        """The mean loss since the last call (the train loss an evaluation row records)."""
        mean = sum(self.losses) / len(self.losses)
        self.losses = []
        return mean
