"""open_clip has no plug-in point for a text tower: the wrappers that give it one.

Each wrapper acts on Tokenformer models only and leaves every other model as open_clip builds
it: the text-tower builder (a ``"tokenformer": true`` text config builds our encoder), the
preprocessing setter (our image mean/std, from the timm config, replace OpenAI's defaults; an
explicit ``image_mean`` / ``image_std`` still wins) and the checkpoint converter (a checkpoint of
a model that grew resizes the model's Pattention layers to its token counts, so
``create_model(name, pretrained=file)`` loads it as saved). ``register`` installs them once and
adds the JSON model configs of ``configs/``, as open_clip keeps its own.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..extras import missing_extra
from ..growth import fit_to_shape, state_shape
from ..pattention import Pattention
from ..vision import TokenformerViT
from .text_tower import TokenformerTextEncoder

try:
    import open_clip
    import open_clip.factory
    import open_clip.model
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
except ModuleNotFoundError as error:  # the [clip] extra
    raise missing_extra(error, "clip") from error

logger = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "configs"


def _text_tower_builder(build: Any) -> Any:
    @functools.wraps(build)
    def build_text_tower(embed_dim: int, text_cfg: Any, *args: Any, **kwargs: Any) -> nn.Module:
        if isinstance(text_cfg, dict) and text_cfg.get("tokenformer"):
            cfg = {k: v for k, v in text_cfg.items() if k != "tokenformer"}
            return TokenformerTextEncoder(embed_dim, **cfg)
        return build(embed_dim, text_cfg, *args, **kwargs)

    build_text_tower.tokenformer = True
    return build_text_tower


def _preprocess_setter(set_cfg: Any) -> Any:
    @functools.wraps(set_cfg)
    def set_model_preprocess_cfg(model: nn.Module, preprocess_cfg: dict[str, Any]) -> None:
        trunk = getattr(getattr(model, "visual", None), "trunk", None)
        uses_default = tuple(preprocess_cfg["mean"]) == OPENAI_DATASET_MEAN and (
            tuple(preprocess_cfg["std"]) == OPENAI_DATASET_STD
        )
        if isinstance(trunk, TokenformerViT) and uses_default:
            timm_cfg = trunk.pretrained_cfg
            # In place: the dict is create_model's own, which it logs next as the final config.
            preprocess_cfg.update({k: timm_cfg[k] for k in ("mean", "std", "interpolation")})
        set_cfg(model, preprocess_cfg)

    set_model_preprocess_cfg.tokenformer = True
    return set_model_preprocess_cfg


def _checkpoint_converter(convert: Any) -> Any:
    @functools.wraps(convert)
    def convert_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = convert(model, state_dict)
        if any(isinstance(m, Pattention) for m in model.modules()):
            fit_to_shape(model, state_shape(model, state_dict))
        return state_dict

    convert_state_dict.tokenformer = True
    return convert_state_dict


def register() -> list[str]:
    """Register the Tokenformer CLIP configs with open_clip (idempotent); returns their names."""
    if not getattr(open_clip.model._build_text_tower, "tokenformer", False):
        open_clip.model._build_text_tower = _text_tower_builder(open_clip.model._build_text_tower)
    if not getattr(open_clip.factory.set_model_preprocess_cfg, "tokenformer", False):
        open_clip.factory.set_model_preprocess_cfg = _preprocess_setter(
            open_clip.factory.set_model_preprocess_cfg
        )
    if not getattr(open_clip.factory.convert_state_dict, "tokenformer", False):
        open_clip.factory.convert_state_dict = _checkpoint_converter(
            open_clip.factory.convert_state_dict
        )
    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
