"""What each optional part needs beyond the core (torch, timm, safetensors), and the error that
names the extra to install when it is missing."""

from __future__ import annotations

EXTRAS = {
    "train": "the engine, the data pipelines and the scripts (Hydra, webdataset, matplotlib, ...)",
    "clip": "the open_clip integration (open_clip_torch)",
    "hf": "the Hugging Face transformers classes of the language tower (transformers)",
    "export": "ONNX export and running the file (onnx, onnxscript, onnxruntime)",
}


def missing_extra(error: ModuleNotFoundError, extra: str) -> ModuleNotFoundError:
    """``error`` (a failed import) restated with the extra that provides the module."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {tuple(EXTRAS)}")
    return ModuleNotFoundError(
        f"{error.name!r} is not installed: it comes with the [{extra}] extra, "
        f"{EXTRAS[extra]}. Install it with: pip install 'tokenformer-mm[{extra}]' "
        "(or [all] for everything)",
        name=error.name,
    )
