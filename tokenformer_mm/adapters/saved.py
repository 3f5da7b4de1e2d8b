"""Modules trained beside a token adapter (``AdapterConfig.modules_to_save``): a head, norms.

As peft's ``modules_to_save``: each such module is wrapped in a ``SavedModule`` that keeps the
trained module (``original``, frozen) and one trainable copy per adapter (``copies``); the active
adapter's copy runs. Switching or removing the adapter gives back the original exactly, and the
copy travels in the adapter file. Attributes the wrapper lacks (``head.in_features``) are read
from the module that runs, so code that inspects the module keeps working; writes go to the
wrapper, and code that replaces the module (timm's ``reset_classifier``) replaces the wrapper
with its copies: do that before ``add_adapter``, and ``merge_adapter`` before exporting.
"""

from __future__ import annotations

import copy

from torch import nn


class SavedModule(nn.Module):
    """A module (``original``) with a copy per adapter, the ``active`` one's in the forward."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original
        self.copies = nn.ModuleDict()
        self.active: str | None = None

    @property
    def adapters(self) -> list[str]:
        return list(self.copies)

    def add(self, name: str) -> nn.Module:
        """A copy of the original for adapter ``name``, which starts exactly where it is."""
        self.copies[name] = copy.deepcopy(self.original)
        return self.copies[name]

    @property
    def running(self) -> nn.Module:
        return self.original if self.active is None else self.copies[self.active]

    def forward(self, *args, **kwargs):
        return self.running(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original", "copies", "active"):
                raise
            return getattr(self.running, name)
