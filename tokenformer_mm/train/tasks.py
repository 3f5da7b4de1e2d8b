"""What a domain plugs into the engine: a ``Task``, its run schema, and the run it wrote.

The engine knows domains only by name: each maps to a task class and a structured config,
imported when a run asks for them (``"module:Class"`` strings), so the engine imports no tower.
A new domain is one ``register_domain`` call (docs/design.md, "Where things go").
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint_layout import newest_checkpoint
from . import checkpoint
from .metric_log import CONFIG_FILE


class Task(Protocol):
    """What a domain supplies: vision, language and CLIP each implement this, nothing more."""

    unit: str  # what ``batch_items`` counts, for the throughput line: "img", "tok", "pair"

    def build_model(self) -> nn.Module: ...

    def train_loader(self) -> DataLoader: ...  # its dataset has ``set_epoch``

    def eval_loader(self) -> DataLoader: ...

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics named ``val/...``, the same on every rank (``tokenformer_mm.distributed``)."""
        ...

    def batch_items(self, batch: dict[str, Any]) -> int: ...


# domain -> ("module:TaskClass", "module:RunConfigClass")
DOMAINS: dict[str, tuple[str, str]] = {
    "vision": (
        "tokenformer_mm.vision.task:ImageClassificationTask",
        "tokenformer_mm.vision.config:VisionRunConfig",
    ),
    "language": (
        "tokenformer_mm.language.task:LanguageModelingTask",
        "tokenformer_mm.language.config:LanguageRunConfig",
    ),
    "clip": ("tokenformer_mm.clip.task:ClipTask", "tokenformer_mm.clip.task:ClipRunConfig"),
}


def register_domain(name: str, task: str, schema: str) -> None:
    """Make ``domain=name`` runnable: ``task`` and ``schema`` are ``"module:Class"`` names."""
    for spec in (task, schema):
        if spec.count(":") != 1:
            raise ValueError(f"expected 'package.module:Class', got {spec!r}")
    DOMAINS[name] = (task, schema)


def _resolve(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _domain(domain: str) -> tuple[str, str]:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(DOMAINS)}")
    return DOMAINS[domain]


def run_schema(domain: str) -> type:
    """The structured config a domain's run is validated against."""
    return _resolve(_domain(domain)[1])


def build_task(cfg: Any) -> Task:
    task = _resolve(_domain(cfg.domain)[0])(cfg)
    if cfg.adapt.num_tokens:  # the model every builder makes: trained weights + the adapter
        from .adapt import adapted

        task.build_model = adapted(task.build_model, cfg.adapt)
    return task


def register_schemas() -> None:
    """Put each domain's run schema in Hydra's ConfigStore as ``<domain>_schema``, and the
    default run_dir's resolver (``run_dir.run_stamp``) in OmegaConf."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from .run_dir import run_stamp

    for domain in DOMAINS:
        ConfigStore.instance().store(name=f"{domain}_schema", node=run_schema(domain))
    OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True, use_cache=True)


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint dir, run dir) from either: a run's newest checkpoint, or the one given."""
    path = Path(path)
    if (path / checkpoint.STATE_FILE).is_file():
        return path, path.parent.parent
    found = newest_checkpoint(path)
    if found is None:
        raise ValueError(f"{path} is neither a checkpoint directory nor a run with checkpoints")
    return found, found.parent.parent


def load_run(
    path: str | Path, overrides: dict[str, Any] | None = None, ema: bool = False
) -> tuple[Any, Task, nn.Module, Path]:
    """(config, task, model with the checkpoint's weights, checkpoint dir) of a training run;
    the checkpoint full or sharded (FSDP2).

    The run's own config (``.hydra/config.yaml``) rebuilds the task; ``overrides`` replace
    dotted keys (e.g. ``{"data.val_shards": ...}``); a model that grew during the run is rebuilt
    at its grown size.
    """
    from omegaconf import OmegaConf

    ckpt, run_dir = find_checkpoint(path)
    if ema and not (ckpt / checkpoint.EMA_FILE).is_file():
        raise ValueError(
            f"ema=True (--ema), but {ckpt} has no EMA weights ({checkpoint.EMA_FILE}): the run was "
            "trained without EMA; drop --ema, or train with train.ema_decay=0.9999"
        )
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir / CONFIG_FILE} is missing: {run_dir} was not written by the Trainer "
            "(or its start was refused); give a run directory of scripts/train.py"
        )
    saved = OmegaConf.load(run_dir / CONFIG_FILE)
    cfg = OmegaConf.merge(OmegaConf.structured(run_schema(saved.domain)), saved)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    task = build_task(cfg)
    model = task.build_model()
    checkpoint.load_model(model, ckpt / checkpoint.EMA_FILE if ema else ckpt)
    return cfg, task, model, ckpt
