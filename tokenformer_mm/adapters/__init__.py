"""Token adapters: new knowledge as appended key-value tokens, the trained model frozen.

A trained model adapts by appending ``m`` tokens to chosen layers and training only those
(docs/design.md, "Token adapters"). ``add_adapter`` wraps each chosen layer in a ``TokenAdapter``
(``layer.py``) holding the layer (frozen) and named adapters, and optionally modules trained
beside the tokens, a head or norms, in a ``SavedModule`` (``saved.py``). With zero keys the model
computes bit for bit what it did, so ``merge_adapter`` (append the tokens for good, as exact
growth does) and ``remove_adapter`` (drop them, the model untouched) are exact, and
``save_adapter`` / ``load_adapter`` (``files.py``) move only the adapter: a small safetensors
file with the shape of everything it was made for, which a model of another shape refuses.
"""

from .files import FORMAT, load_adapter, save_adapter
from .layer import ADAPTER_INITS, EXACT_NORMS, AdapterConfig, TokenAdapter
from .manage import (
    adapter_state_dict,
    add_adapter,
    merge_adapter,
    remove_adapter,
    set_adapter,
    using_adapter,
)
from .saved import SavedModule

__all__ = [
    "ADAPTER_INITS",
    "EXACT_NORMS",
    "FORMAT",
    "AdapterConfig",
    "SavedModule",
    "TokenAdapter",
    "adapter_state_dict",
    "add_adapter",
    "load_adapter",
    "merge_adapter",
    "remove_adapter",
    "save_adapter",
    "set_adapter",
    "using_adapter",
]
