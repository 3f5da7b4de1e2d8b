"""Which task and config schema serve each domain; imported lazily, so the core needs no tower."""

from __future__ import annotations

import importlib
from typing import Any

# domain -> (module, task class, run-config dataclass)
DOMAINS = {
    "vision": ("vision", "ImageClassificationTask", "VisionRunConfig"),
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
