"""A run's own config, and what a resume may change of it (docs/design.md, "The engine").

The first start saves the composed config as ``.hydra/config.yaml``. ``resume=true`` continues
that config: the command line's overrides are the only changes (``resumed_config``), and each
change must be one a run survives (``RESUMABLE``: more steps, how often it evaluates, where it
runs, a lower lr). An accepted change is logged, written into the saved config and appended to
``config_history.jsonl``; any other is refused, naming the key and both values.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..extras import missing_extra

try:
    from omegaconf import DictConfig, OmegaConf, open_dict
except ModuleNotFoundError as error:  # the [train] extra
    raise missing_extra(error, "train") from error

from .metric_log import CONFIG_FILE

logger = logging.getLogger(__name__)

HISTORY_FILE = "config_history.jsonl"
# Keys a resumed run may change: its length and record, how and where it computes, and the step
# size (to recover from divergence). The rest (model, data, the optimizer's other settings,
# growth, seed) define the run; changing them is a new run or a branch.
RESUMABLE = (
    "run_dir",
    "resume",
    "train.steps",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.device",
    "train.precision",
    "train.tf32",
    "train.parallel",
    "train.compile",
    "train.compile_backend",
    "train.grad_checkpointing",
    "train.strict_data",
    "train.nonfinite",
    "train.nonfinite_patience",
    "train.stop_signals",
    "data.num_workers",
    "optim.lr",  # a diverged run resumes with a lower lr or stronger clipping (nonfinite.py)
    "optim.min_lr",
    "optim.grad_clip",
)


def saved_config(run_dir: str | Path) -> DictConfig | None:
    """The config the run at ``run_dir`` saved, or None before its first accepted start."""
    path = Path(run_dir) / CONFIG_FILE
    return OmegaConf.load(path) if path.is_file() else None


def resumed_config(today: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """What ``resume=true`` runs: the run's saved config, with the keys that ``overrides`` (the
    command line, Hydra's syntax) name taken from ``today`` (the config composed from them).

    A key the saved config lacks (added to the library since) keeps today's default.
    """
    saved = saved_config(today.run_dir)
    if saved is None:
        return today  # nothing to continue: the Trainer says so
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = with_todays_defaults(saved, today)
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.split(".")[0] == "hydra":  # Hydra's own settings, not the run's
            continue
        value = OmegaConf.select(today, key, default=None)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def with_todays_defaults(saved: DictConfig, today: DictConfig) -> DictConfig:
    """``saved`` laid over ``today``: a field the run's config lacks (added to the library since
    it was written, at any depth: a growth event's ``tau_ramp``) takes today's default; keys the
    run added (e.g. ``++model.kwargs.embed_dim``) stay its own."""
    cfg = today.copy()
    with open_dict(cfg):
        cfg.merge_with(saved)
    return cfg


def check_changes(run_dir: Path, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``cfg``'s changes to the run's saved config, ``{key: (saved, now)}``; raises
    ``ValueError`` for a change a resumed run cannot take."""
    saved = saved_config(run_dir)
    if saved is None:
        return {}
    before, now = _leaves(with_todays_defaults(saved, cfg)), _leaves(cfg)
    changes = {
        key: (before.get(key), now.get(key))
        for key in sorted(before.keys() | now.keys())
        if key in before and before.get(key) != now.get(key)
    }
    for key, (was, new) in changes.items():
        if key not in RESUMABLE:
            raise ValueError(
                f"resume=true: {key} is {was!r} in the run's config ({run_dir / CONFIG_FILE}) "
                f"but {new!r} now; a resumed run keeps it (it may change {', '.join(RESUMABLE)}). "
                "Drop the override, or start a new run (growth.init_from=<checkpoint> grows from "
                "this one, train.branch_from=<checkpoint> branches it)"
            )
    return {key: change for key, change in changes.items() if key not in ("run_dir", "resume")}


def save(run_dir: Path, cfg: DictConfig, changes: dict[str, tuple[Any, Any]], step: int) -> None:
    """Write the config of a start the Trainer accepted (atomically); a resume's changes are
    logged and appended to ``config_history.jsonl`` (the step, the time, old and new values)."""
    path = run_dir / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(OmegaConf.to_yaml(OmegaConf.merge(cfg, {"resume": False})))
    os.replace(staging, path)
    for key, (was, new) in changes.items():
        logger.info("resumed at step %d with %s=%r (was %r)", step, key, new, was)
    if changes:
        record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        record["changes"] = {key: {"was": was, "now": new} for key, (was, new) in changes.items()}
        with (run_dir / HISTORY_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")


def _leaves(cfg: DictConfig) -> dict[str, Any]:
    """Every value of ``cfg`` by its dotted key (lists whole: a growth schedule is one value)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
