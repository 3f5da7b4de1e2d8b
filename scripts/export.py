"""Write a checkpoint's model weights as one ``model.safetensors`` for inference.

    python scripts/export.py runs/language/<run>/checkpoints/step_00004000 model.safetensors
    python scripts/export.py runs/language/<run> model.safetensors     # its newest checkpoint
    python scripts/export.py runs/vision/<run> <folder> --timm         # timm's local folder
    python scripts/export.py runs/language/<run> <folder> --hf         # Hugging Face layout

A sharded checkpoint (``train.parallel=fsdp``: every rank's ``sharded/`` files) is gathered in
this one process; a full one is copied. The file loads with timm's
``pretrained_cfg_overlay=dict(file=...)``, open_clip's ``pretrained=`` and
``tokenformer_mm.train.checkpoint.load_model`` (which resizes a model built at its initial size
to a grown checkpoint's shape). With ``--timm`` (an image run) the output is timm's local
folder instead, ``config.json`` holding the model's grown shape as its ``model_args``:
``timm.create_model("local-dir:<folder>", pretrained=True)`` builds and loads it. With ``--hf``
(a language run) it is the Hugging Face layout with the run's tokenizer, which
``TokenformerLM.from_pretrained``, ``AutoModelForCausalLM`` (after ``import
tokenformer_mm.language.hf``) and ``AutoTokenizer`` load. An existing output file, or a folder
with files, is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenformer_mm.train import checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a checkpoint directory or a run directory")
    parser.add_argument("output", type=Path, help="the .safetensors file (or a folder)")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument(
        "--timm", action="store_true", help="an image run as timm's local folder (local-dir:)"
    )
    layout.add_argument(
        "--hf", action="store_true", help="a language run in the Hugging Face layout"
    )
    args = parser.parse_args(argv)
    source = args.source
    if not (source / checkpoint.STATE_FILE).is_file():
        newest = checkpoint.latest(source / "checkpoints")
        if newest is None:
            parser.error(f"{source} is neither a checkpoint nor a run directory with checkpoints")
        source = newest
    try:
        if args.timm:
            written = _timm_folder(source, args.output)
        elif args.hf:
            written = _hf_folder(source, args.output)
        else:
            written = checkpoint.export(source, args.output)
    except ValueError as error:
        parser.error(str(error))
    print(f"{source} -> {written}")


def _timm_folder(source: Path, folder: Path) -> Path:
    """The run's model, at its grown shape, as timm's local folder."""
    from tokenformer_mm.train import load_run
    from tokenformer_mm.vision import TokenformerViT, save_for_timm

    _, _, model, _ = load_run(source)
    if not isinstance(model, TokenformerViT):
        raise ValueError(f"--timm exports an image run; {source} holds a {type(model).__name__}")
    return save_for_timm(model, folder)


def _hf_folder(source: Path, folder: Path) -> Path:
    """The run's model and tokenizer in the Hugging Face layout (never over existing files)."""
    from tokenformer_mm.language import TokenformerLM
    from tokenformer_mm.train import load_run

    _, task, model, _ = load_run(source)
    if not isinstance(model, TokenformerLM):
        raise ValueError(f"--hf exports a language run; {source} holds a {type(model).__name__}")
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty; choose a new folder or empty it")
    return model.save_pretrained(folder, tokenizer=task.tokenizer)


if __name__ == "__main__":
    main()
