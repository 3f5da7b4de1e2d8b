"""Growth: scale a Tokenformer by appending parameter tokens or blocks (docs/design.md, "Growth").

Everything here works on any module tree holding Pattention layers: either tower, a CLIP model,
a model wrapped in DDP. ``tokens`` widens layers, ``depth`` inserts blocks, ``grow`` joins them
with the optimizer (``optimizer``), ``loading`` moves checkpoints across sizes.
"""

from .depth import DEPTH_INITS, block_container, block_containers, grow_depth, match_depth
from .grow import grow_model
from .loading import (
    fit_to_state,
    grown_companion_state,
    load_grown,
    load_resized,
    match_token_counts,
)
from .optimizer import grow_optimizer_state, seed_new_rows
from .report import GrownLayer, GrowthReport
from .tokens import DEFAULT_PERTURBATION, INITS

__all__ = [
    "DEFAULT_PERTURBATION",
    "DEPTH_INITS",
    "INITS",
    "GrownLayer",
    "GrowthReport",
    "block_container",
    "block_containers",
    "fit_to_state",
    "grow_depth",
    "grow_model",
    "grow_optimizer_state",
    "grown_companion_state",
    "load_grown",
    "load_resized",
    "match_depth",
    "match_token_counts",
    "seed_new_rows",
]
