"""Write a checkpoint's model weights as one ``model.safetensors`` for inference.

    python scripts/export.py runs/language/<run>/checkpoints/step_00004000 model.safetensors
    python scripts/export.py runs/language/<run> model.safetensors     # its newest checkpoint
    python scripts/export.py runs/vision/<run> <folder> --timm         # timm's local folder
    python scripts/export.py runs/language/<run> <folder> --hf         # Hugging Face layout
    python scripts/export.py runs/vision/<run> model.onnx --onnx       # one ONNX graph
    python scripts/export.py runs/language/<run> model.pt2 --export-program  # torch.export

A sharded checkpoint (``train.parallel=fsdp``: every rank's ``sharded/`` files) is gathered in
this one process; a full one is copied. The file loads with timm's
``pretrained_cfg_overlay=dict(file=...)``, open_clip's ``pretrained=`` and
``tokenformer_mm.train.checkpoint.load_model`` (which resizes a model built at its initial size
to a grown checkpoint's shape). With ``--timm`` (an image run) the output is timm's local
folder instead, ``config.json`` holding the model's grown shape as its ``model_args``:
``timm.create_model("local-dir:<folder>", pretrained=True)`` builds and loads it. With ``--hf``
(a language run) it is the Hugging Face layout with the run's tokenizer, which
``TokenformerLM.from_pretrained``, ``AutoModelForCausalLM`` (after ``import
tokenformer_mm.language.hf``) and ``AutoTokenizer`` load. With ``--onnx`` (the ``[export]``
extra) the model is one ONNX file (``torch.onnx.export(dynamo=True)``) that onnxruntime runs, with
``--export-program`` a ``torch.export`` program (``torch.export.load``): images (B, C, H, W) ->
logits, or token ids (B, T) -> the logits of every position (B, T, vocab), the batch (and H, W
of a ``dynamic_img_size`` model, T up to the context) free (docs/export.md). An existing output
file, or a folder with files, is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from tokenformer_mm.checkpoint_layout import newest_checkpoint
from tokenformer_mm.train import checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a checkpoint directory or a run directory")
    parser.add_argument("output", type=Path, help="the .safetensors file (or a folder)")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument(
        "--timm", action="store_true", help="an image run as timm's local folder (local-dir:)"
    )
    layout.add_argument(
        "--hf", action="store_true", help="a language run in the Hugging Face layout"
    )
    layout.add_argument(
        "--onnx", action="store_true", help="the model as one ONNX file (onnxruntime runs it)"
    )
    layout.add_argument(
        "--export-program", action="store_true", help="the model as a torch.export program"
    )
    args = parser.parse_args(argv)
    source = args.source
    if not (source / checkpoint.STATE_FILE).is_file():
        newest = newest_checkpoint(source)
        if newest is None:
            parser.error(f"{source} is neither a checkpoint nor a run directory with checkpoints")
        source = newest
    try:
        if args.timm:
            written = _timm_folder(source, args.output)
        elif args.hf:
            written = _hf_folder(source, args.output)
        elif args.onnx or args.export_program:
            written = _graph_file(source, args.output, onnx=args.onnx)
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


class AllLogits(nn.Module):
    """A language model's logits at every position, the one output of its exported graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, all_logits=True)[0]  # (B, T, vocab)


def graph_inputs(model: nn.Module) -> tuple[nn.Module, str, torch.Tensor, dict[int, Any]]:
    """What to export for ``model``: the module, its input's name, an example input and the
    input's free dims. Batch 2: torch.export would fix a dim that is 1 in the example."""
    from tokenformer_mm.language import TokenformerLM
    from tokenformer_mm.vision import TokenformerViT

    if isinstance(model, TokenformerLM):
        context = model.config.context_length
        tokens = torch.randint(model.config.vocab_size, (2, min(16, context)))
        return AllLogits(model), "tokens", tokens, {0: Dim("batch"), 1: Dim("seq", max=context)}
    if isinstance(model, TokenformerViT):
        images = torch.randn(2, model.in_chans, *model.patch_embed.img_size)
        dims = {0: Dim("batch")}
        if model.dynamic_img_size:  # any multiple of the patch size: torch.export finds it
            dims |= {2: Dim.AUTO, 3: Dim.AUTO}
        return model, "images", images, dims
    raise ValueError(f"exports a TokenformerViT or a TokenformerLM, not a {type(model).__name__}")


def _graph_file(source: Path, output: Path, onnx: bool) -> Path:
    """The run's model as an ONNX file (``onnx``) or a torch.export program."""
    from tokenformer_mm.train import load_run

    taken = [p for p in (output, output.with_name(output.name + ".data")) if p.exists()]
    if taken:  # an ONNX file keeps large weights beside it in <name>.data
        raise ValueError(f"{taken[0]} exists; choose a new file name")
    output.parent.mkdir(parents=True, exist_ok=True)
    return write_graph(load_run(source)[2], output, onnx)


def write_graph(model: nn.Module, output: Path, onnx: bool) -> Path:
    """``model``, in eval mode, as an ONNX file (``onnx``) or a torch.export program."""
    module, name, example, dims = graph_inputs(model)
    module.eval()
    if not onnx:
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes=(dims,)), output)
        return output
    try:
        import onnxscript  # noqa: F401  (what torch.onnx's dynamo exporter builds with)
    except ModuleNotFoundError as error:
        from tokenformer_mm.extras import missing_extra

        raise missing_extra(error, "export") from error
    torch.onnx.export(
        module, (example,), output, dynamo=True, dynamic_shapes=(dims,), input_names=[name],
        output_names=["logits"],
    )  # fmt: skip
    return output


if __name__ == "__main__":
    main()
