"""An image Tokenformer's checkpoints through timm: the file timm loads
(``pretrained_cfg_overlay=dict(file=...)``, ``pretrained=True``: a weights file, a run or a
checkpoint directory), the filter timm calls on it, the checks that keep a trained part from
being dropped or left random, and ``save_for_timm``, the folder timm builds a grown model from
(``timm.create_model("local-dir:<folder>", pretrained=True)``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from tokenformer_mm.checkpoint_layout import MODEL_FILE as WEIGHTS_FILE
from tokenformer_mm.checkpoint_layout import newest_checkpoint
from tokenformer_mm.growth import fit_to_shape, state_shape
from tokenformer_mm.growth.tokens import token_counts_by_kind

if TYPE_CHECKING:
    from .tokenformer_vit import TokenformerViT

logger = logging.getLogger(__name__)


def with_weights_file(pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` of ``timm.create_model`` with ``pretrained_cfg_overlay``'s ``file`` made the
    weights file it names (``weights_file``), before timm opens it."""
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if not pretrained or not overlay.get("file"):
        return kwargs
    overlay = {**overlay, "file": str(weights_file(overlay["file"]))}
    return {**kwargs, "pretrained_cfg_overlay": overlay}


def weights_file(path: str | Path) -> Path:
    """The weights file ``path`` names: the file itself; in a checkpoint directory or an export
    folder, its ``model.safetensors``; in a run directory (or its ``checkpoints/``), the newest
    checkpoint's. Anything else is an error naming ``path`` and what to pass instead."""
    path = Path(path)
    if path.is_file():
        return path
    newest = newest_checkpoint(path)
    folder = newest if newest is not None else path
    if (folder / WEIGHTS_FILE).is_file():
        return folder / WEIGHTS_FILE
    given = f"pretrained_cfg_overlay=dict(file={str(path)!r})"
    if newest is not None:  # train.parallel=fsdp writes shards, not one file
        raise FileNotFoundError(
            f"{given}: its newest checkpoint {folder} has no {WEIGHTS_FILE} (a sharded one); "
            f"write one with: python scripts/export.py {folder} {WEIGHTS_FILE}"
        )
    problem = "is a folder without" if path.is_dir() else "does not exist; expected"
    raise FileNotFoundError(
        f"{given} {problem} a {WEIGHTS_FILE}: pass a checkpoint's file (runs/vision/<run>/"
        f"checkpoints/step_00000800/{WEIGHTS_FILE}), a run or checkpoint directory, or the "
        "output of scripts/export.py"
    )


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: TokenformerViT
) -> dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: the one place foreign checkpoints are converted.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` and ``module.`` (DDP) prefixes, resamples
    the position embedding to the model's grid and the patch embedding to its patch size, and
    drops the head when the class count differs (or the model has no head). A checkpoint of a
    model that grew has more parameter tokens or blocks than the registered size: the model is
    fitted to the checkpoint's shape (``fit_to_shape``, the rule every loader follows), so it
    loads as it was saved; a checkpoint with fewer blocks, or a count that is no multiple, is an
    error.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    model_state = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key == "pos_embed" and value.shape != model.pos_embed.shape:
            value = resample_abs_pos_embed(
                value,
                new_size=list(model.patch_embed.grid_size),
                num_prefix_tokens=model.num_prefix_tokens,
            )
        elif key == "patch_embed.proj.weight" and value.shape != model_state[key].shape:
            value = resample_patch_embed(value, list(model.patch_embed.patch_size))
        elif key.startswith("head.") and _new_head(value.shape[0], model):
            logger.warning(
                "dropping %s %s: the checkpoint's head has %d classes, the model %d; the model's "
                "head is new (random)", key, tuple(value.shape), value.shape[0], model.num_classes,
            )  # fmt: skip
            continue
        out[key] = value
    _check_layer_scale(out, model)
    fit_to_shape(model, state_shape(model, out))
    return out


def _new_head(checkpoint_classes: int, model: TokenformerViT) -> bool:
    """Whether the model gets a new head: only when it was created with another class count on
    purpose (fine-tuning). timm's loader then also drops a head whose class count differs from
    the pretrained config's, so a trained head that would be lost is an error saying the fix."""
    default = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    fix = f"pretrained_cfg_overlay=dict(file=..., num_classes={checkpoint_classes})"
    if checkpoint_classes != model.num_classes and model.num_classes == default:
        raise ValueError(
            f"the checkpoint's head has {checkpoint_classes} classes, the model "
            f"{model.num_classes} (its default): pass {fix} to load the trained head, or "
            "num_classes=<yours> to fine-tune with a new one"
        )
    if checkpoint_classes == model.num_classes != default:
        raise ValueError(
            f"the checkpoint's {checkpoint_classes}-class head fits the model, but timm drops a "
            f"head whose class count is not the pretrained config's ({default}): pass {fix}"
        )
    return checkpoint_classes != model.num_classes


def _check_layer_scale(state_dict: dict[str, torch.Tensor], model: TokenformerViT) -> None:
    """LayerScale or not is part of the function: a checkpoint of the other kind cannot load."""
    saved = {k for k in state_dict if k.startswith("blocks.") and ".ls" in k}
    has = {k for k in model.state_dict() if k.startswith("blocks.") and ".ls" in k}
    if not any(k.startswith("blocks.") for k in state_dict) or bool(saved) == bool(has):
        return
    if saved:
        gamma = next(state_dict[k] for k in sorted(saved))
        fix = f"init_values={float(gamma.flatten()[0]):g} (any value: the checkpoint sets them)"
    else:
        fix = "init_values=0 (the paper's block, the default before LayerScale)"
    raise ValueError(
        f"the checkpoint's blocks {'have' if saved else 'have no'} LayerScale (ls1/ls2.gamma), "
        f"the model's {'have' if has else 'have none'}: create the model with {fix}"
    )


def save_for_timm(model: TokenformerViT, directory: str | Path) -> Path:
    """Write ``model`` as timm's local folder (``config.json`` + ``model.safetensors``, timm's own
    ``save_for_hf``), its ``model_args`` holding the shape it has now (depth, tokens per kind):
    ``timm.create_model(f"local-dir:{directory}", pretrained=True)`` builds a grown model at its
    size and loads it. Refuses a folder that holds files."""
    from timm.models import save_for_hf

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty; choose a new folder or empty it")
    counts = token_counts_by_kind(model)
    uneven = {kind: sorted(n) for kind, n in counts.items() if len(n) > 1}
    if uneven:
        raise ValueError(
            f"token counts differ between layers of one kind ({uneven}): timm's model_args hold "
            "one count per kind; save the weights alone (checkpoint.save_weights) instead"
        )
    shape_args = {"depth": len(model.blocks), **{f"{k}_tokens": n.pop() for k, n in counts.items()}}
    if any(getattr(m, "base_tokens", None) is not None for m in model.modules()):
        shape_args["parametrization"] = "mup"  # the values' multiplier: rebuilt, not guessed
    save_for_hf(model, str(directory), model_args=shape_args, safe_serialization=True)
    return directory
