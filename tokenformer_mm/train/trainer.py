"""The training loop every domain shares (docs/design.md, "The engine").

A domain supplies a ``Task`` (model, loaders, loss, evaluation); the ``Trainer`` owns the rest:
optimizer, schedule, clipping, accumulation, autocast, EMA, evaluation, checkpoints, exact resume,
growth, DDP/FSDP2, compile, divergence, clean stops on a scheduler's signal, the run's record.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..checkpoint_layout import CHECKPOINTS_DIR, newest_checkpoint
from ..distributed import mean_over_ranks, setup_distributed
from ..growth import fit_to_shape, grow_model, grown_companion_state, load_grown, seed_new_rows
from ..growth import state_shape as shape_from_tensors
from ..growth import tau as growth_tau
from ..pattention import KINDS
from . import checkpoint, parallel, resume, run_config, start
from .batches import EpochBatches, data_columns, reset_counts, to_device
from .config import validate
from .metric_log import MetricLog, ProgressLine
from .nonfinite import NonFiniteGuard
from .optim import build_optimizer
from .preemption import StopSignals
from .rng import seed_everything
from .sharded import is_sharded, sharded_shapes
from .state import TrainState
from .tasks import Task

logger = logging.getLogger(__name__)


class Trainer:
    """Trains ``task`` as ``cfg`` says, writing everything under ``run_dir`` (rank 0 only).

    Construction order, each step needing the one before: the model at its initial size ->
    fitted to and loaded from the checkpoint it resumes (or warm-started from a smaller run) ->
    its FLOPs per item (on the bare model) -> FSDP2's shards -> the optimizer over the final
    parameters -> the EMA -> the other parts of the resumed checkpoint -> DDP, torch.compile.
    """

    def __init__(self, cfg: Any, task: Task, run_dir: str | os.PathLike) -> None:
        validate(cfg)
        self.cfg, self.task = cfg, task
        self.run_dir = Path(run_dir)
        changes = run_config.check_changes(self.run_dir, cfg) if cfg.resume else {}
        self.ckpt_dir = self.run_dir / CHECKPOINTS_DIR
        self.rank, self.world_size, self.device = setup_distributed(cfg.train.device)
        self.is_main = self.rank == 0
        if self.is_main:
            start.check_writable(self.run_dir)
        self.sharded = cfg.train.parallel == "fsdp" and self.world_size > 1
        self.use_bf16 = start.use_bf16(cfg.train.precision, self.device)
        start.set_tf32(self.device, cfg.train.tf32)
        self.log = MetricLog(self.run_dir, write=self.is_main)
        self.state = TrainState()
        self.guard = NonFiniteGuard(
            cfg.train.nonfinite, cfg.train.nonfinite_patience, self.ckpt_dir
        )
        self.stop_signals = StopSignals(cfg.train.stop_signals)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = task.build_model().to(self.device)
        start.set_grad_checkpointing(self.model, cfg.train.grad_checkpointing)
        # Built now, before any training: a missing shard pattern fails here, not at step 1.
        self.train_loader, self.eval_loader = task.train_loader(), task.eval_loader()
        for loader in (self.train_loader, self.eval_loader):
            if hasattr(loader.dataset, "strict"):
                loader.dataset.strict = cfg.train.strict_data
        self.data = EpochBatches(self.train_loader)
        resume_from = start.resume_checkpoint(self.run_dir, cfg.resume, cfg.train.branch_from)
        saved = checkpoint.load_state(resume_from) if resume_from is not None else None
        if resume_from is not None and is_sharded(resume_from):  # weights load once sharded
            shape = checkpoint.read_shape(resume_from)
            if shape is None:  # written before checkpoints kept the record
                shape = shape_from_tensors(self.model, sharded_shapes(resume_from))
            fit_to_shape(self.model, shape)
        elif resume_from is not None:
            checkpoint.load_model(self.model, resume_from)
        elif cfg.growth.init_from:
            self._warm_start(cfg.growth.init_from)
        self.flops_per_item = self._measure_flops()
        if saved is not None:  # an older checkpoint's by index, read by the unsharded model
            saved["optimizer"] = resume.optimizer_state_by_name(
                self.model, lambda: self._optim(self.model)[0], saved.get("optimizer")
            )
        if self.sharded:
            parallel.shard(self.model, self.device, self.world_size)
        self.optimizer, self.scheduler = self._optim(self.model)
        self.ema = ModelEmaV3(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        if resume_from is not None:
            resume.restore(self._parts(), resume_from, saved, cfg.seed)
            start.check_branch(resume_from, self.ckpt_dir, self.state.step, cfg.train.steps)
            self.log.resume(self.state.step)
            logger.info("resumed from %s at step %d", resume_from, self.state.step)
        else:
            seed_everything(cfg.seed * 1000 + self.rank)  # per-rank augmentation and dropout
        self.train_module = self._wrap()
        if self.is_main:
            run_config.save(self.run_dir, cfg, changes, self.state.step)

    @property
    def step(self) -> int:
        """Optimizer steps taken so far (``self.state.step``)."""
        return self.state.step

    @property
    def growth_events(self) -> list[dict[str, Any]]:
        """The run's growth events so far, as ``growth.jsonl`` records them."""
        return self.state.growth_events

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        """Every evaluation of the run so far (the rows of ``metrics.csv``)."""
        return self.log.eval_rows

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to step ``until`` (default ``train.steps``); returns the metrics and outputs.

        The LR schedule always spans ``train.steps``: ``fit(until=n)`` pauses a run, and a
        later ``fit()`` continues it (e.g. after growing it by hand with ``grow``).
        """
        cfg = self.cfg.train
        until = cfg.steps if until is None else until
        growth_at = {event.step: event for event in self.cfg.growth.schedule}
        progress = ProgressLine(until, self.state.step, cfg.log_every, self.task.unit,
                                self.flops_per_item, show=self.is_main)  # fmt: skip
        with self.stop_signals, progress.bar:
            while self.state.step < until:
                if self.state.step in growth_at:
                    event = growth_at[self.state.step]
                    self.grow(event.factor, event.kinds, event.depth, event.tau_ramp)
                    progress.flops_per_item = self.flops_per_item
                ema = [self.ema.module] if self.ema is not None else []  # τ set, not averaged
                growth_tau.ramp_tau(self.state.growth_events, self.state.step, self.model, *ema)
                loss, grad_norm, items = self._train_step()
                self.state.step += 1
                self.state.total_flops += items * self.world_size * self.flops_per_item
                step, final = self.state.step, self.state.step == until
                lr = self.scheduler.get_last_lr()[0]
                self.log.log_step(step, self.data.epoch, loss, lr, grad_norm)
                progress.update(step, loss, items * self.world_size, lr, final)
                if step % cfg.eval_every == 0 or final:
                    self._evaluate_and_log(progress.window_loss())
                stop = self.stop_signals.stop_requested(self.device) and not final
                if step % cfg.checkpoint_every == 0 or final or stop:
                    self.guard.check_weights(self.model, step)  # never a checkpoint to distrust
                    resume.save(self._parts(), self.ckpt_dir, self.sharded, cfg.keep_checkpoints)
                if stop:
                    raise self.stop_signals.preempted(step, newest_checkpoint(self.ckpt_dir))
        plot = self.log.plot([e["step"] for e in self.state.growth_events if e["step"] > 0])
        return {
            "metrics": self.eval_rows[-1] if self.eval_rows else {},
            "checkpoint": str(newest_checkpoint(self.ckpt_dir)),
            "metrics_csv": str(self.run_dir / "metrics.csv"),
            "plot": str(plot),
        }

    def _train_step(self) -> tuple[float, float, int]:
        """One optimizer step over ``accum_steps`` micro-batches: (mean loss, grad norm, items)."""
        accum = self.cfg.train.accum_steps
        total_loss, items = torch.zeros((), device=self.device), 0
        for micro in range(accum):
            batch = to_device(next(self.data), self.device)
            items += self.task.batch_items(batch)
            # DDP / FSDP2 reduce gradients only in the last micro-step of an accumulation.
            sync = self.world_size == 1 or micro == accum - 1
            with parallel.gradient_sync(self.train_module, sync):
                with self._autocast():
                    loss = self.task.training_loss(self.train_module, batch) / accum
                loss.backward()
            total_loss += loss.detach()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = self.cfg.optim.grad_clip or float("inf")
        grad_norm = parallel.local_value(nn.utils.clip_grad_norm_(params, clip)).item()
        loss = mean_over_ranks(total_loss).item()
        update = self.guard.allows_update(self.state.step + 1, loss, grad_norm)  # or raises
        if update:
            seed_new_rows(self.optimizer)  # rows a growth appended: their state, however it came
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.nonfinite_skipped += not update
        if self.ema is not None and update:
            self.ema.update(self.model, step=self.state.step)
        return loss, grad_norm, items

    def grow(self, factor: float = 1.0, kinds: Sequence[str] = KINDS, depth: int = 1,
             tau_ramp: int = 0) -> dict:  # fmt: skip
        """Grow the live model, its optimizer state and EMA: ``depth`` times the blocks, then
        ``factor`` times the tokens of ``kinds``, τ to theirs over ``tau_ramp`` steps (``tau``);
        returns the record written to ``growth.jsonl`` (parameters and validation metrics before
        and after: equal for the exact inits)."""
        before = self._evaluate(self._eval_model(ema=False))
        growth = self.cfg.growth
        ema_state = self.ema.module.state_dict() if self.ema is not None else None
        # The new rows from one seed on every rank: DDP's replicas stay equal, FSDP2 shards
        # equal full tensors; the ranks' own RNG streams continue undisturbed.
        seed = self.cfg.seed * 1_000_003 + self.state.step
        self.train_module = self.model  # drop DDP (its hooks) before anything runs a backward
        model, optimizer = self.model, self.optimizer
        if self.sharded:  # grown as on one process, on a whole copy on every rank
            model, optimizer = parallel.gathered(model, optimizer, self._empty_model(), self._optim)
        report = grow_model(
            model, factor if factor > 1 else None, kinds=kinds, init=growth.init,
            optimizer=optimizer, perturbation=growth.perturbation, depth=depth,
            depth_init=growth.depth_init, seed=seed,
        )  # fmt: skip
        self.model = model
        self.flops_per_item = self._measure_flops()
        if self.sharded:
            schedule = self.scheduler.state_dict()
            self.optimizer, self.scheduler = parallel.resharded(
                self.model, optimizer, self.device, self.world_size, self._optim
            )
            start.continue_schedule(self.optimizer, self.scheduler, schedule)
        self.train_module = self._wrap()  # DDP's buckets were sized for the old parameters
        if ema_state is not None:  # the averages where the old model had parameters
            self.ema.module = copy.deepcopy(self.model)
            self.ema.module.load_state_dict(
                grown_companion_state(self.model, ema_state, depth, growth.depth_init)
            )
        after = self._evaluate(self._eval_model(ema=False))
        record = {"step": self.state.step, "factor": factor, "depth": depth, **report.counts()}
        record.update(val_before=before, val_after=after)
        record.update(growth_tau.ramp_record(self.model, tau_ramp, report))  # in the run's state
        self.state.growth_events.append(record)
        self.log.log_growth(self.state.growth_events)
        logger.info("step %d: %s; val before %s, after %s", self.state.step, report, before, after)
        return record

    # --- parts ------------------------------------------------------------------------------

    def _parts(self) -> resume.RunParts:
        ema = self.ema.module if self.ema is not None else None
        return resume.RunParts(
            self.model, self.optimizer, self.scheduler, ema, self.state, self.data
        )

    def _optim(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """This run's AdamW and LR schedule (growth events' lr_scale in it) over ``model``."""
        cfg = self.cfg
        return build_optimizer(model, cfg.optim, cfg.train.steps, cfg.growth.schedule)

    def _empty_model(self) -> nn.Module:
        """The task's model at its initial size, allocated, not initialised (no RNG drawn)."""
        with torch.device("meta"):
            model = self.task.build_model()
        return model.to_empty(device=self.device)

    def _eval_model(self, ema: bool = True) -> nn.Module:
        """What evaluation runs: the EMA (if kept), the model, or under FSDP2 a full copy of it
        (a sharded forward needs every rank in step; their evaluation batches may differ)."""
        if ema and self.ema is not None:
            return self.ema.module
        if not self.sharded:
            return self.model
        return parallel.full_replica(self.model, self._empty_model())

    def _warm_start(self, source: str) -> None:
        init, perturbation = self.cfg.growth.init, self.cfg.growth.perturbation
        report = load_grown(self.model, checkpoint.load_weights(source), init, perturbation)
        logger.info("warm start from %s: %s", source, report)
        self.state.growth_events.append({"step": 0, "from": source, **report.counts()})

    def _measure_flops(self) -> float:
        return start.measure_flops(
            self.model, self.task, self.eval_loader, self.device, self.cfg.train.grad_checkpointing
        )

    # --- evaluation -------------------------------------------------------------------------

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        reset_counts(self.eval_loader)  # val_data/*: what this evaluation's data lost
        with self._autocast():
            return self.task.evaluate(model, self.eval_loader)

    def _evaluate_and_log(self, train_loss: float) -> None:
        metrics = self._evaluate(self._eval_model())
        lost = data_columns(self.train_loader, self.eval_loader, self.device)  # what data lost
        self.log.log_evaluation(
            {
                "step": self.state.step,
                "epoch": self.data.epoch,
                "train/loss": train_loss,
                "lr": self.scheduler.get_last_lr()[0],
                "params": sum(p.numel() for p in self.model.parameters()),
                "flops": self.state.total_flops,
                **metrics,
                **lost,
                **self.guard.columns(self.state.nonfinite_skipped),
            }
        )
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        logger.info("step %d: %s", self.state.step, summary)

    def _autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA (or when asked); fp32 otherwise."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16)

    def _wrap(self) -> nn.Module:
        """The module the training step calls: the model (sharded in place under FSDP2), DDP
        around it under torchrun with ``train.parallel=ddp``; compiled with ``train.compile``."""
        module = self.model
        if self.world_size > 1 and not self.sharded:
            module = parallel.replicate(self.model, self.device)
        if not self.cfg.train.compile:
            return module
        return torch.compile(module, backend=self.cfg.train.compile_backend)
