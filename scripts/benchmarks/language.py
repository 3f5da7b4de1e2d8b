"""The LM against GPTs of equal FLOPs (transformers' GPT-NeoX matched to it, and a nanoGPT-style
one with learned positions): training and generation throughput."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    adamw_step,
    default_device,
    interleaved_seconds,
    millions_of_params,
    mixed_precision,
    precision_note,
    record,
)
from benchmarks.matched import GPT, MATCHED_MLP_RATIO, matched_neox


def short(name: str) -> str:
    """A model's name without its parenthesised or comma-separated details."""
    return name.split(" (")[0].split(",")[0]


def bench_language(args: argparse.Namespace) -> None:
    from tokenformer_mm.flops import training_flops
    from tokenformer_mm.language import TokenformerLM, lm_config

    device = default_device()
    config = lm_config(args.model, context_length=args.seq_len + args.new_tokens + 16)
    if (
        not config.qkv_tokens == config.proj_tokens == config.dim
        or config.ffn_tokens != 4 * config.dim
    ):
        raise ValueError(
            f"the matched GPTs assume n = dim (q/k/v/proj) and 4 x dim (FFN) tokens; config "
            f"{args.model!r} has {config.qkv_tokens}/{config.proj_tokens}/{config.ffn_tokens} "
            f"at dim {config.dim}: pick one of the official-shaped configs (small, 150M, ...)"
        )
    models = {
        f"Tokenformer {args.model}": TokenformerLM(config),
        f"matched GPT-NeoX (transformers; rotary 25 %, mlp_ratio {MATCHED_MLP_RATIO:g})": (
            matched_neox(config)
        ),
        f"nanoGPT-style GPT, mlp_ratio {MATCHED_MLP_RATIO:g} (equal FLOPs; equal params "
        "but for its position table)": GPT(
            config.vocab_size,
            config.context_length,
            config.dim,
            config.depth,
            config.num_heads,
            MATCHED_MLP_RATIO,
        ),
    }
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    autocast = mixed_precision(device)
    steps, flops = {}, {}
    for name, model in models.items():
        model.to(device)

        def loss(model: torch.nn.Module = model, batch: slice = slice(None)) -> torch.Tensor:
            with autocast:  # both models: nanoGPT's forward(idx, targets) -> (logits, loss)
                return model(tokens[batch, :-1], tokens[batch, 1:])[1]

        flops[name] = training_flops(model, lambda m=model: loss(m, slice(0, 1)))
        steps[name] = adamw_step(model, lambda m=model: loss(m))
    seconds = interleaved_seconds(steps, args.repeats, device)
    step_tokens = args.batch_size * args.seq_len
    ours, neox, gpt = list(models)
    per_flop = {name: seconds[name] / flops[name] for name in models}
    rows = [
        {
            "model": name,
            "params (M)": millions_of_params(model),
            "measure": f"training, batch {args.batch_size} x {args.seq_len}",
            "tokens/s": f"{step_tokens / seconds[name]:,.0f}",
            "time per FLOP vs GPT-NeoX": f"{per_flop[name] / per_flop[neox]:.2f}x",
        }
        for name, model in models.items()
    ]
    prompt = tokens[:1, :16]
    generation = {
        (ours, "KV cache on"): lambda: models[ours].generate(prompt, args.new_tokens, top_k=50),
        (ours, "KV cache off"): lambda: models[ours].generate(
            prompt, args.new_tokens, top_k=50, use_cache=False
        ),
        (neox, "KV cache on (transformers' generate)"): lambda: models[neox].model.generate(
            prompt,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=True,
            top_k=50,
            use_cache=True,
        ),
        (gpt, "no cache (nanoGPT's loop)"): lambda: models[gpt].generate(
            prompt, args.new_tokens, top_k=50
        ),
    }
    with autocast:
        gen_seconds = interleaved_seconds(generation, 1, device, warmup=1)
    for (name, how), sec in gen_seconds.items():
        rows.append(
            {
                "model": name,
                "params (M)": "",
                "measure": f"generation of {args.new_tokens} tokens, {how}",
                "tokens/s": f"{args.new_tokens / sec:,.0f}",
                "time per FLOP vs GPT-NeoX": "",
            }
        )
    record(
        f"Language: Tokenformer {args.model} vs matched GPTs ({device.type})",
        rows,
        notes=(
            f"Training: medians of {args.repeats} interleaved AdamW steps, "
            + precision_note(device)
            + "; FLOPs by FlopCounterMode, attention by one convention (tokenformer_mm.flops): "
            + ", ".join(f"{flops[n] / 1e9:.2f} GFLOPs per sequence for {short(n)}" for n in models)
            + ". Generation: batch 1 from a 16-token prompt, top-k 50."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: language."""
    lang = commands.add_parser("language", help="LM training and generation throughput")
    lang.add_argument("--model", default="small", help="a name in tokenformer_mm.language.CONFIGS")
    lang.add_argument("--batch-size", type=int, default=16)
    lang.add_argument("--seq-len", type=int, default=256)
    lang.add_argument("--repeats", type=int, default=10)
    lang.add_argument("--new-tokens", type=int, default=512)
    lang.set_defaults(run=bench_language)
