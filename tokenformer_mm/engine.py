"""One training engine for every domain (DESIGN §6).

A domain supplies a ``Task``: the model, the loaders, the training loss and the evaluation. The
engine owns everything else: AdamW with weight-decay groups, warmup + cosine, gradient clipping
and accumulation, bf16 autocast on CUDA, EMA, periodic evaluation and checkpoints, exact resume,
growth inside the run, DDP under torchrun, logging (CSV, TensorBoard when installed, a progress
bar) and a plot at the end.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint
from .config import validate
from .data import to_device
from .flops import training_flops
from .growth import grow_model, load_grown, match_token_counts
from .pattention import KINDS, Pattention

logger = logging.getLogger(__name__)


class Task(Protocol):
    """What a domain supplies: vision, language and CLIP each implement this, nothing more."""

    unit: str  # what ``batch_items`` counts, for the throughput line: "img", "tok", "pair"

    def build_model(self) -> nn.Module: ...

    def train_loader(self) -> DataLoader: ...  # its dataset has ``set_epoch``

    def eval_loader(self) -> DataLoader: ...

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics named ``val/...``, already reduced over ranks."""
        ...

    def batch_items(self, batch: dict[str, Any]) -> int: ...


# --- distributed ------------------------------------------------------------------------------


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the torchrun process group if launched by torchrun; return (rank, world, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    target = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world_size, target


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank (a one-element list without torchrun).

    Tensors travel as NumPy arrays: tensors inside ``all_gather_object`` fail to unpickle in
    torch 2.14 (``UntypedStorage has no attribute dtype``).
    """
    if not dist.is_initialized():
        return [obj]
    objects: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(objects, _map_leaves(obj, torch.Tensor, lambda t: t.cpu().numpy()))
    return [_map_leaves(o, np.ndarray, torch.from_numpy) for o in objects]


def _map_leaves(obj: Any, kind: type, fn: Any) -> Any:
    if isinstance(obj, kind):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_leaves(v, kind, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(v, kind, fn) for v in obj)
    return obj


def seed_everything(seed: int) -> None:
    """Python, NumPy (timm's mixup draws from it) and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- optimisation -----------------------------------------------------------------------------


def param_groups(
    model: nn.Module, weight_decay: float, token_weight_decay: float | None
) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices, not norms, biases, position embeddings or class tokens.

    One rule, as in nanoGPT: parameters with fewer than 2 dims (norms, biases, τ is a buffer) and
    those the model names in ``no_weight_decay()`` are not decayed; Pattention key/value tokens
    get ``token_weight_decay`` (default: ``weight_decay``).
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    tokens = {id(p) for m in model.modules() if isinstance(m, Pattention) for p in m.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "tokens": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in tokens:
            groups["tokens"].append(param)
        elif param.ndim < 2 or name in skip or name.split(".")[-1] in skip:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    decay = {
        "decay": weight_decay,
        "no_decay": 0.0,
        "tokens": weight_decay if token_weight_decay is None else token_weight_decay,
    }
    return [
        {"params": params, "weight_decay": decay[name], "name": name}
        for name, params in groups.items()
        if params
    ]


class WarmupCosine:
    """LR multiplier: linear warmup from 0, then cosine down to ``min_ratio`` at ``total`` steps."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- data position ----------------------------------------------------------------------------


class EpochBatches:
    """Batches forever, epoch after epoch; its position (epoch, batch) is saved with checkpoints.

    Resuming mid-epoch replays the epoch's first batches without training on them: the pipelines
    draw their augmentation from per-sample seeds, so the replayed stream is the same stream.
    """

    def __init__(self, loader: DataLoader, epoch: int = 0, batch: int = 0) -> None:
        self.loader, self.epoch, self.batch = loader, epoch, batch
        self._iterator: Iterator[Any] | None = None

    def _start_epoch(self) -> None:
        self.loader.dataset.set_epoch(self.epoch)
        self._iterator = iter(self.loader)
        for done in range(self.batch):  # fast-forward after a resume
            if next(self._iterator, None) is None:
                raise ValueError(
                    f"cannot resume at batch {self.batch} of epoch {self.epoch}: the training "
                    f"data now yields only {done} batches per epoch (did the shards or the batch "
                    "size change?)"
                )

    def __next__(self) -> Any:
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.batch == 0:
                raise ValueError(
                    "the training loader yields no batch: fewer samples per rank than "
                    "train.batch_size; lower the batch size or add data"
                ) from None
            self.epoch, self.batch = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._iterator)
        self.batch += 1
        return batch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}


# --- the engine -------------------------------------------------------------------------------


class Trainer:
    """Trains ``task`` as ``cfg`` says, writing everything under ``run_dir`` (rank 0 only)."""

    def __init__(self, cfg: Any, task: Task, run_dir: str | os.PathLike) -> None:
        validate(cfg)
        self.cfg, self.task = cfg, task
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.rank, self.world_size, self.device = setup_distributed(cfg.train.device)
        self.is_main = self.rank == 0
        self.use_bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and self.device.type == "cuda"
        )

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = task.build_model().to(self.device)
        # Checked here, before any training: a missing shard pattern fails now, not at step 1.
        self.train_loader, self.eval_loader = task.train_loader(), task.eval_loader()
        self.step = 0
        self.total_flops = 0  # training FLOPs so far, over all ranks
        self.data = EpochBatches(self.train_loader)
        self.growth_events: list[dict[str, Any]] = []
        self.eval_rows: list[dict[str, Any]] = []
        resume_from = self._resume_checkpoint()
        if resume_from is not None:  # a run that grew resumes at its grown size
            match_token_counts(self.model, checkpoint.load_weights(resume_from))
        elif cfg.growth.init_from:
            self._warm_start(cfg.growth.init_from)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.optim.weight_decay, cfg.optim.token_weight_decay),
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            WarmupCosine(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr / cfg.optim.lr),
        )
        self.ema = (
            ModelEmaV3(self.model, decay=cfg.train.ema_decay) if cfg.train.ema_decay else None
        )
        if resume_from is not None:
            self._load(resume_from)  # restores every RNG as it was at the checkpoint
        else:
            seed_everything(cfg.seed * 1000 + self.rank)  # per-rank augmentation and dropout
        self.flops_per_item = self._measure_flops()  # before DDP: its hooks expect DDP's forward
        self._wrap()
        self.tensorboard = _tensorboard(self.run_dir) if self.is_main else None

    # --- setup helpers ----------------------------------------------------------------------

    def _resume_checkpoint(self) -> Path | None:
        found = checkpoint.latest(self.ckpt_dir)
        if found is not None and not self.cfg.resume:
            raise ValueError(
                f"{self.run_dir} already holds checkpoints ({found.name}); pass resume=true to "
                "continue that run, or choose another run_dir"
            )
        if self.cfg.resume and found is None:
            logger.warning("resume=true but %s has no checkpoint: starting fresh", self.ckpt_dir)
        return found

    def _warm_start(self, source: str) -> None:
        report = load_grown(self.model, checkpoint.load_weights(source), self.cfg.growth.init)
        logger.info("warm start from %s: %s", source, report)
        self.growth_events.append({"step": 0, "from": source, **_report_fields(report)})

    def _load(self, path: Path) -> None:
        state = checkpoint.load_state(path)
        self.model.load_state_dict(checkpoint.load_weights(path))
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint.load_weights(path / checkpoint.EMA_FILE))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.total_flops = state["total_flops"]
        self.growth_events = state["growth_events"]
        ranks = state["ranks"]
        if len(ranks) == self.world_size:
            checkpoint.set_rng_state(ranks[self.rank]["rng"])
            self.data = EpochBatches(self.train_loader, **ranks[self.rank]["data"])
        else:
            logger.warning(
                "checkpoint written by %d processes, resuming with %d: data restarts at epoch %d",
                len(ranks),
                self.world_size,
                ranks[0]["data"]["epoch"] + 1,
            )
            seed_everything(self.cfg.seed * 1000 + self.rank + self.step)
            self.data = EpochBatches(self.train_loader, epoch=ranks[0]["data"]["epoch"] + 1)
        self.eval_rows = [
            r for r in _read_csv(self.run_dir / "metrics.csv") if r["step"] <= self.step
        ]
        if self.is_main:
            _truncate_csv(self.run_dir / "train_steps.csv", self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    def _measure_flops(self) -> float:
        """Training FLOPs per item (image, token) of the current model, on one validation item.

        Every RNG is restored afterwards: measuring must not shift what an exact resume replays.
        """
        batch = next(iter(self.eval_loader))
        two = to_device({k: v[:2] for k, v in batch.items()}, self.device)  # even: mixup needs it
        rng = checkpoint.rng_state()
        flops = training_flops(self.model, lambda: self.task.training_loss(self.model, two))
        checkpoint.set_rng_state(rng)
        per_item = flops / self.task.batch_items(two)
        logger.info("training FLOPs per %s: %.4g", self.task.unit, per_item)
        return per_item

    def _autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA (or when asked); fp32 otherwise."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16)

    def _wrap(self) -> None:
        """The module the training step calls: DDP around the model under torchrun."""
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module: nn.Module = DistributedDataParallel(
                self.model, device_ids=device_ids
            )
        else:
            self.train_module = self.model

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to step ``until`` (default ``train.steps``); returns the metrics and outputs.

        The LR schedule always spans ``train.steps``: ``fit(until=n)`` pauses a run, and a
        later ``fit()`` continues it (e.g. after growing it by hand with ``grow``).
        """
        cfg = self.cfg.train
        until = cfg.steps if until is None else until
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        progress = tqdm(
            total=until,
            initial=self.step,
            disable=not self.is_main,
            unit="step",
            dynamic_ncols=True,
        )
        schedule = {event.step: event for event in self.cfg.growth.schedule}
        window_loss, window_items, window_start = [], 0, time.perf_counter()
        while self.step < until:
            if self.step in schedule:
                event = schedule[self.step]
                self.grow(event.factor, event.kinds)
            loss, grad_norm, items = self._train_step()
            self.step += 1
            self.total_flops += items * self.world_size * self.flops_per_item
            window_loss.append(loss)
            window_items += items
            self._log_step(loss, grad_norm)
            if self.step % cfg.log_every == 0 or self.step == until:
                rate = window_items * self.world_size / (time.perf_counter() - window_start)
                recent = window_loss[-cfg.log_every :]
                progress.set_postfix(
                    loss=f"{sum(recent) / len(recent):.4f}",
                    lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                    **{f"{self.task.unit}/s": f"{rate:.0f}"},
                    GFLOPs=f"{rate * self.flops_per_item / 1e9:.1f}",
                )
                window_items, window_start = 0, time.perf_counter()
            progress.update(1)
            if self.step % cfg.eval_every == 0 or self.step == until:
                self._evaluate_and_log(sum(window_loss) / len(window_loss))
                window_loss = []
            if self.step % cfg.checkpoint_every == 0 or self.step == until:
                self._save()
        progress.close()
        if self.is_main:
            plot_metrics(self.run_dir, [e["step"] for e in self.growth_events if e["step"] > 0])
        final = self.eval_rows[-1] if self.eval_rows else {}
        return {
            "metrics": final,
            "checkpoint": str(checkpoint.latest(self.ckpt_dir)),
            "metrics_csv": str(self.run_dir / "metrics.csv"),
            "plot": str(self.run_dir / "metrics.png"),
        }

    def _train_step(self) -> tuple[float, float, int]:
        accum = self.cfg.train.accum_steps
        total_loss, items = torch.zeros((), device=self.device), 0
        for micro in range(accum):
            batch = to_device(next(self.data), self.device)
            items += self.task.batch_items(batch)
            # DDP all-reduces gradients only in the last micro-step of an accumulation.
            sync = self.world_size == 1 or micro == accum - 1
            with contextlib.nullcontext() if sync else self.train_module.no_sync():
                with self._autocast():
                    loss = self.task.training_loss(self.train_module, batch) / accum
                loss.backward()
            total_loss += loss.detach()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = self.cfg.optim.grad_clip
        grad_norm = nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return all_reduce_mean(total_loss).item(), grad_norm.item(), items

    def grow(self, factor: float, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
        """Grow the live model, its optimizer state and EMA; evaluate before and after.

        Returns the record also written to ``growth.jsonl``: parameters before and after and the
        validation metrics on both sides (equal for ``growth.init=exact``).
        """
        with self._autocast():
            before = self.task.evaluate(self.model, self.eval_loader)
        report = grow_model(
            self.model,
            factor=factor,
            kinds=kinds,
            init=self.cfg.growth.init,
            optimizer=self.optimizer,
        )
        self.flops_per_item = self._measure_flops()
        self._wrap()  # DDP's buckets were sized for the old parameters; it also re-syncs ranks
        if self.ema is not None:
            ema_state = self.ema.module.state_dict()
            self.ema.module = copy.deepcopy(self.model)
            load_grown(self.ema.module, ema_state, self.cfg.growth.init)
        with self._autocast():
            after = self.task.evaluate(self.model, self.eval_loader)
        record = {
            "step": self.step,
            "factor": factor,
            **_report_fields(report),
            "val_before": before,
            "val_after": after,
        }
        self.growth_events.append(record)
        logger.info("step %d: %s; val before %s, after %s", self.step, report, before, after)
        if self.is_main:  # rewritten whole: a resumed run replaces what its killed run logged
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps(event) + "\n" for event in self.growth_events]
            (self.run_dir / "growth.jsonl").write_text("".join(lines))
        return record

    # --- evaluation, logging, checkpoints ---------------------------------------------------

    def _evaluate_and_log(self, train_loss: float) -> None:
        model = self.ema.module if self.ema is not None else self.model
        with self._autocast():
            metrics = self.task.evaluate(model, self.eval_loader)
        row = {
            "step": self.step,
            "epoch": self.data.epoch,
            "train/loss": train_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "params": sum(p.numel() for p in self.model.parameters()),
            "flops": self.total_flops,
            **metrics,
        }
        self.eval_rows.append(row)
        logger.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if self.is_main:
            _write_csv(self.run_dir / "metrics.csv", self.eval_rows)
            if self.tensorboard is not None:
                for key, value in row.items():
                    if key != "step":
                        self.tensorboard.add_scalar(key, value, self.step)

    def _log_step(self, loss: float, grad_norm: float) -> None:
        if not self.is_main:
            return
        path = self.run_dir / "train_steps.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "loss", "lr", "grad_norm"])
            lr = self.scheduler.get_last_lr()[0]
            writer.writerow([self.step, self.data.epoch, repr(loss), repr(lr), repr(grad_norm)])

    def _save(self) -> None:
        per_rank = gather_objects({"rng": checkpoint.rng_state(), "data": self.data.position()})
        if not self.is_main:
            return
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "growth_events": self.growth_events,
            "total_flops": self.total_flops,
            "ranks": per_rank,
        }
        ema = self.ema.module if self.ema is not None else None
        checkpoint.save(
            self.ckpt_dir, self.step, self.model, state, ema, self.cfg.train.keep_checkpoints
        )


def _report_fields(report: Any) -> dict[str, Any]:
    return {
        "params_before": report.params_before,
        "params_after": report.params_after,
        "layers": len(report.layers),
    }


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [
        {k: float(v) if k != "step" else int(v) for k, v in row.items() if v != ""} for row in rows
    ]


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop the rows a killed run logged after its last checkpoint; they are trained again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= last_step]
    path.write_text("".join(kept))


def plot_metrics(run_dir: Path, growth_steps: list[int]) -> Path:
    """``metrics.png``: training loss per step and every validation metric, growth marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = _read_csv(run_dir / "train_steps.csv")
    evals = _read_csv(run_dir / "metrics.csv")
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
    path = run_dir / "metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
