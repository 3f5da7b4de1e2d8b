"""The language tower's one on-disk format, the Hugging Face layout: a directory that
``TokenformerLM.from_pretrained``, ``AutoModelForCausalLM`` (after ``import
tokenformer_mm.language.hf``) and ``AutoTokenizer`` all read.

- ``config.json``: ``LMConfig``'s fields (the current depth and token counts) with
  ``model_type: "tokenformer"``, ``architectures`` and ``tie_word_embeddings``;
- ``model.safetensors``: the model's state dict, the shape record in its metadata;
- ``generation_config.json``: the end-of-text and padding ids, when the tokenizer is known;
- ``tokenizer.json`` and ``tokenizer_config.json``, when the tokenizer is known.

Directories written before this layout (``config.json`` without ``model_type``) still load, and
so do those transformers' own ``save_pretrained`` writes (its keys under ``model.``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from tokenformer_mm.adapters.manage import adapter_names
from tokenformer_mm.checkpoint_layout import MODEL_FILE
from tokenformer_mm.growth import load_resized
from tokenformer_mm.weights import file_shape, save_weights

from .tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer, save_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = MODEL_FILE  # Hugging Face's name for it too (transformers' SAFE_WEIGHTS_NAME)
GENERATION_FILE = "generation_config.json"
MODEL_TYPE = "tokenformer"
ARCHITECTURE = "TokenformerForCausalLM"  # language/hf.py
HF_PREFIX = "model."  # where TokenformerForCausalLM keeps the TokenformerLM


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, overwrite: bool, tokenizer: Tokenizer | None
) -> Path:
    """``model`` (a ``TokenformerLM``) in the layout above; refuses to replace files unless
    ``overwrite``."""
    adapted = adapter_names(model)
    if adapted:
        raise ValueError(
            f"the model carries token adapters {adapted}: merge_adapter or remove_adapter them "
            "first (save_adapter writes an adapter alone)"
        )
    directory = Path(directory)
    names = [CONFIG_FILE, WEIGHTS_FILE, GENERATION_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE]
    existing = [name for name in names if (directory / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)}; pass overwrite=True to replace "
            "them, or choose another directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        **dataclasses.asdict(model.config),  # follows growth: the grown model's shape
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "tie_word_embeddings": True,
    }
    _write_json(directory / CONFIG_FILE, config)
    save_weights(model, directory / WEIGHTS_FILE)
    generation: dict[str, Any] = {}
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, model.config.context_length)
        generation = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.eos_id}
    _write_json(directory / GENERATION_FILE, generation)
    return directory


def from_pretrained(cls: type[nn.Module], name_or_path: str | os.PathLike) -> nn.Module:
    """A ``cls`` (``TokenformerLM``) from a directory in the layout above, or a Hub repo id."""
    directory = _local_directory(name_or_path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} is missing; from_pretrained reads a directory written by "
                "save_pretrained (released official checkpoints load with load_official)"
            )
    saved = json.loads((directory / CONFIG_FILE).read_text())
    config_fields = {field.name for field in dataclasses.fields(cls.config_class)}
    if saved.get("model_type") == MODEL_TYPE:  # the Hugging Face layout: its bookkeeping aside
        saved = {key: value for key, value in saved.items() if key in config_fields}
    # Written before the value tokens' gradient became the loss's own everywhere; it set only
    # how a model trained, never what it computes.
    saved.pop("value_grad", None)
    unknown = sorted(set(saved) - config_fields)
    if unknown:
        raise ValueError(f"{directory / CONFIG_FILE} has unknown LMConfig fields {unknown}")
    model = cls(cls.config_class(**saved))
    weights = safetensors.torch.load_file(str(directory / WEIGHTS_FILE))
    if weights and all(key.startswith(HF_PREFIX) for key in weights):  # transformers wrote it
        weights = {key.removeprefix(HF_PREFIX): value for key, value in weights.items()}
    shape = file_shape(directory / WEIGHTS_FILE)  # per-layer counts, should growth be uneven
    return load_resized(model, weights, shape)


def _local_directory(name_or_path: str | os.PathLike) -> Path:
    directory = Path(name_or_path)
    if directory.is_dir():
        return directory
    if directory.exists() or str(name_or_path).count("/") != 1:
        raise FileNotFoundError(
            f"{name_or_path} is neither a directory written by save_pretrained (config.json "
            "+ model.safetensors) nor a Hugging Face Hub repo id ('owner/name')"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
