"""Safetensors files of model weights that carry the model's shape record (``growth/shape.py``)
in their metadata, so a loader can fit a model built at its initial size before it loads them."""

from __future__ import annotations

import json
import os

import safetensors
import safetensors.torch
import torch
from torch import nn

from .growth import Shape, model_shape

METADATA_KEY = "tokenformer_mm.shape"


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, shape: Shape | None):
    """``tensors`` as a safetensors file with ``shape`` (None: no record) in its metadata."""
    metadata = {} if shape is None else {METADATA_KEY: json.dumps(shape, sort_keys=True)}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def save_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """A module's state dict (contiguous, unshared CPU copies of every tensor) and its shape."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_tensors(tensors, path, model_shape(module))


def file_shape(path: str | os.PathLike) -> Shape | None:
    """The record a ``.safetensors`` file carries, or None for a file written without one."""
    with safetensors.safe_open(str(path), "pt") as file:
        text = (file.metadata() or {}).get(METADATA_KEY)
    return json.loads(text) if text else None
