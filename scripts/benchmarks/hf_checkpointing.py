"""Activation memory of the language model trained through transformers, with and without
``gradient_checkpointing_enable()``: the bytes autograd saves for backward in one forward."""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import record


def saved_bytes(model: torch.nn.Module, tokens: torch.Tensor) -> int:
    """Bytes of every tensor autograd saves for backward during one training forward (each
    storage once), then the backward itself, so that checkpointing's recompute runs too."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(tokens, labels=tokens).loss  # use_cache as the config has it (True)
    total = sum(storages.values())
    loss.backward()
    return total


def bench_hf_checkpointing(args: argparse.Namespace) -> None:
    import transformers

    import tokenformer_mm.language.hf  # noqa: F401  (registers the Auto classes)
    from tokenformer_mm.language import TokenformerLM, lm_config

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        TokenformerLM(lm_config(args.model, vocab_size=320)).save_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).train()
    tokens = torch.randint(0, 320, (args.batch_size, args.seq_len))
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        mb = saved_bytes(model, tokens) / 2**20
        rows.append({"gradient checkpointing": checkpointing, "saved for backward (MiB)": mb})
    ratio = rows[1]["saved for backward (MiB)"] / rows[0]["saved for backward (MiB)"]
    for row in rows:
        row["saved for backward (MiB)"] = f"{row['saved for backward (MiB)']:.1f}"
    record(
        f"transformers: activation memory with gradient checkpointing (lm_{args.model})",
        rows,
        notes=(
            f"`TokenformerForCausalLM` from `save_pretrained`, batch {args.batch_size} x "
            f"{args.seq_len} tokens, a training forward with the config's `use_cache` (True): "
            "the bytes of the tensors autograd saves for backward (each storage once; the "
            "parameters included). With checkpointing the model turns `use_cache` off as "
            f"transformers' models do and keeps each block's input alone: {ratio:.2f}x."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: hf-checkpointing."""
    hf = commands.add_parser("hf-checkpointing", help="activation memory under transformers")
    hf.add_argument("--model", default="small", help="a name in tokenformer_mm.language.CONFIGS")
    hf.add_argument("--batch-size", type=int, default=8)
    hf.add_argument("--seq-len", type=int, default=256)
    hf.set_defaults(run=bench_hf_checkpointing)
