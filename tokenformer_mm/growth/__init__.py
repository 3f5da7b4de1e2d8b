"""Growth: scale a Tokenformer by appending parameter tokens or blocks (docs/design.md, "Growth").

Everything here works on any module tree holding Pattention layers: either tower, a CLIP model,
a model wrapped in DDP. ``tokens`` widens layers, ``depth`` inserts blocks, ``grow`` joins them
with the optimizer (``optimizer``), ``shape`` is the record of what growth changed and the one
way a checkpoint loads into a model built at its initial size, ``loading`` warm-starts a larger
model from a smaller one, ``tau`` moves a grown layer's τ to its own size's after exact growth.
"""

from .depth import DEPTH_INITS, block_container, block_containers
from .grow import grow_depth, grow_model
from .loading import grown_companion_state, load_grown
from .optimizer import grow_optimizer_state, seed_new_rows
from .report import GrownLayer, GrowthReport
from .shape import Shape, fit_to_shape, load_resized, model_shape, state_shape
from .tau import ramp_record, ramp_tau, set_ramped_tau, tau_ramp_ends
from .tokens import DEFAULT_PERTURBATION, INITS

__all__ = [
    "DEFAULT_PERTURBATION",
    "DEPTH_INITS",
    "INITS",
    "GrownLayer",
    "GrowthReport",
    "Shape",
    "block_container",
    "block_containers",
    "fit_to_shape",
    "grow_depth",
    "grow_model",
    "grow_optimizer_state",
    "grown_companion_state",
    "load_grown",
    "load_resized",
    "model_shape",
    "ramp_record",
    "ramp_tau",
    "seed_new_rows",
    "set_ramped_tau",
    "state_shape",
    "tau_ramp_ends",
]
