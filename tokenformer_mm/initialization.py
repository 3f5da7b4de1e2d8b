"""Where initial values come from: eager and deferred construction, and growth's new rows.

**Deferred init.**
FSDP2 and accelerate build large models without allocating them: construct under
``torch.device("meta")``, shard or ``to_empty`` onto a device, then initialise. Each model's
``init_weights()`` is that last step, and also the last step of its eager constructor. The
draws its submodules' constructors make (``nn.Linear``'s own init, ...) are discarded
(``discarded_rng``), so both orders draw the same numbers from the same seed: the meta-device
model equals the eager one, parameter for parameter and buffer for buffer (τ included).

**Growth on several ranks** draws its new rows under ``seeded_rng(seed)``: the same seed on
every rank gives every rank the same new rows (what DDP needs; FSDP2 shards them afterwards),
and the ranks' own RNG streams (dropout, augmentation) continue undisturbed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def discarded_rng() -> Iterator[None]:
    """Run the block with the CPU (and current CUDA) RNG restored afterwards (CUDA's wherever
    it is available: a model built on the GPU may be what starts it)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block from ``torch.manual_seed(seed)``, the caller's RNG state restored after."""
    with discarded_rng():
        torch.manual_seed(seed)
        yield


def reset_submodules(model: nn.Module) -> None:
    """Every submodule's ``reset_parameters()``, in module order (the model's own excluded)."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if module is not model and callable(reset):
            reset()
