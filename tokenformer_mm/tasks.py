"""Which task and config schema serve each domain; imported lazily, so the core needs no tower."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoint
from .growth import match_token_counts

# domain -> (module, task class, run-config dataclass)
DOMAINS = {
    "vision": ("vision", "ImageClassificationTask", "VisionRunConfig"),
    "language": ("language", "LanguageModelingTask", "LanguageRunConfig"),
    "clip": ("tokenformer_mm.clip_task", "ClipTask", "ClipRunConfig"),
}


def _domain(domain: str) -> tuple[Any, str, str]:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(DOMAINS)}")
    module, task, schema = DOMAINS[domain]
    return importlib.import_module(module), task, schema


def run_schema(domain: str) -> type:
    """The structured config a domain's run is validated against."""
    module, _, schema = _domain(domain)
    return getattr(module, schema)


def build_task(cfg: Any) -> Any:
    module, task, _ = _domain(cfg.domain)
    return getattr(module, task)(cfg)


def register_schemas() -> None:
    """Put each domain's run schema in Hydra's ConfigStore as ``<domain>_schema``."""
    from hydra.core.config_store import ConfigStore

    for domain in DOMAINS:
        ConfigStore.instance().store(name=f"{domain}_schema", node=run_schema(domain))


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint dir, run dir) from either: a run's newest checkpoint, or the one given."""
    path = Path(path)
    if (path / checkpoint.STATE_FILE).is_file():
        return path, path.parent.parent
    found = checkpoint.latest(path / "checkpoints")
    if found is None:
        raise ValueError(f"{path} is neither a checkpoint directory nor a run with checkpoints")
    return found, path


def load_run(
    path: str | Path, overrides: dict[str, Any] | None = None, ema: bool = False
) -> tuple[Any, Any, nn.Module, Path]:
    """(config, task, model with the checkpoint's weights, checkpoint dir) of a training run.

    The run's own config (``.hydra/config.yaml``) rebuilds the task; ``overrides`` replace
    dotted keys (e.g. ``{"data.val_shards": ...}``); a model that grew during the run is rebuilt
    at its grown size.
    """
    from omegaconf import OmegaConf

    ckpt, run_dir = find_checkpoint(path)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(run_schema(saved.domain)), saved)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    task = build_task(cfg)
    model = task.build_model()
    weights = checkpoint.load_weights(
        ckpt / (checkpoint.EMA_FILE if ema else checkpoint.MODEL_FILE)
    )
    match_token_counts(model, weights)
    model.load_state_dict(weights)
    return cfg, task, model, ckpt
