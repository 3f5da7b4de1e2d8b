"""``adapt:`` in a run: train a token adapter on a trained model (tokenformer_mm.adapters).

The task's model is built, given the trained weights (``adapt.base``: a run, a checkpoint or a
weights file; a grown one is fitted to its shape first) and the adapter, everything else frozen.
The engine sees one model whose only trainable parameters are the adapter's; every checkpoint
also holds the adapter alone (``adapter_<name>.safetensors``), the file to ship.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..adapters import AdapterConfig, add_adapter
from ..growth import load_resized
from . import checkpoint


def adapter_config(adapt: Any) -> AdapterConfig:
    """The library's ``AdapterConfig`` of a run's ``adapt`` settings."""
    blocks = None if adapt.blocks is None else tuple(adapt.blocks)
    return AdapterConfig(
        adapt.num_tokens, tuple(adapt.kinds), blocks, adapt.init,
        modules_to_save=tuple(adapt.modules_to_save),
    )  # fmt: skip


def adapted(build: Callable[[], nn.Module], adapt: Any) -> Callable[[], nn.Module]:
    """``build`` followed by the trained weights and the adapter (a builder the engine calls
    wherever it makes the model: at the start, and empty for sharding or a resume)."""
    config = adapter_config(adapt)  # bad settings fail when the run is set up

    def build_adapted() -> nn.Module:
        model = build()
        if adapt.base and not any(p.is_meta for p in model.parameters()):
            source = Path(adapt.base)
            if source.is_dir() and not (source / checkpoint.STATE_FILE).is_file():
                from .tasks import find_checkpoint

                source = find_checkpoint(source)[0]  # a run: its newest checkpoint
            load_resized(model, checkpoint.load_weights(source))
        add_adapter(model, adapt.name, config)
        return model

    return build_adapted
