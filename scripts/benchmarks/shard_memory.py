"""Bytes per rank of a large LM, DDP against FSDP2, on two ranks."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from benchmarks.common import (
    ROOT,
    record,
)


def shard_memory_worker(args: argparse.Namespace) -> None:
    """One rank of ``shard-memory`` (under torchrun): one AdamW step of the LM, wrapped as the
    engine wraps it, then the bytes this rank holds, written to ``args.out/rank{r}.json``."""
    import json
    import resource

    import torch.distributed as dist

    from tokenformer_mm.distributed import setup_distributed
    from tokenformer_mm.language import TokenformerLM
    from tokenformer_mm.language.model import lm_config
    from tokenformer_mm.train import parallel
    from tokenformer_mm.train.config import OptimConfig
    from tokenformer_mm.train.optim import build_optimizer

    rank, world_size, device = setup_distributed("cpu")
    torch.manual_seed(0)
    if args.worker == "fsdp":  # deferred init: no rank ever holds the whole model
        with torch.device("meta"):
            model = TokenformerLM(lm_config(args.model))
        parallel.shard(model, device, world_size)
        model.to_empty(device=device)
        model.init_weights()
        module = model
    else:
        model = TokenformerLM(lm_config(args.model))
        module = parallel.replicate(model, device)
    optimizer, _ = build_optimizer(model, OptimConfig(), total_steps=10)
    tokens = torch.randint(0, model.config.vocab_size, (1, args.seq_len + 1))
    _, loss = module(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    optimizer.step()

    def held(tensors: Iterable[torch.Tensor]) -> int:  # a DTensor holds its local shard
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        return sum(t.numel() * t.element_size() for t in local)

    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    sizes = {
        "parameters": held(model.parameters()),
        "gradients": held(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer state": held(t for t in state if t.dim() > 0),
        "peak RSS": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(sizes))
    dist.destroy_process_group()


def bench_shard_memory(args: argparse.Namespace) -> None:
    """Bytes each of 2 ranks holds for parameters, gradients and AdamW state, DDP vs FSDP2."""
    import json
    import subprocess

    rows = []
    for mode in ("ddp", "fsdp"):
        with tempfile.TemporaryDirectory() as out:
            command = [
                *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
                *(
                    "--nproc_per_node",
                    str(args.ranks),
                    str(ROOT / "scripts" / "bench.py"),
                    "shard-memory",
                ),
                *("--worker", mode, "--model", args.model, "--seq-len", str(args.seq_len)),
                *("--out", out),
            ]
            subprocess.run(command, check=True)
            ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.ranks)]
        for rank, sizes in enumerate(ranks):
            row = {"parallel": mode, "rank": rank}
            row.update({f"{name} GiB": f"{value / 2**30:.3f}" for name, value in sizes.items()})
            held = sum(v for k, v in sizes.items() if k != "peak RSS")
            row["held GiB"] = f"{held / 2**30:.3f}"
            rows.append(row)
    record(
        f"Memory per rank: DDP vs FSDP2 ({args.model} LM, {args.ranks} ranks)",
        rows,
        notes=(
            f"`TokenformerLM({args.model})`, fp32, one AdamW step at batch 1 x {args.seq_len} "
            "tokens under torchrun (gloo, CPU), wrapped as the engine wraps it "
            "(`tokenformer_mm.train.parallel`: `replicate` / `shard`, FSDP2 one unit per block). "
            "Bytes of the tensors each rank holds after the step (a DTensor's local shard); "
            "`held` is their sum. DDP also keeps gradient buckets (about one more gradient's "
            "size, not counted here, in the peak RSS). The FSDP2 model is built on the meta "
            "device, sharded, then materialised and initialised (`to_empty` + `init_weights`): "
            "no rank ever holds the whole model."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: shard-memory."""
    shard = commands.add_parser("shard-memory", help="bytes per rank: DDP vs FSDP2")
    shard.add_argument("--model", default="450M", help="a name in tokenformer_mm.language.CONFIGS")
    shard.add_argument("--ranks", type=int, default=2)
    shard.add_argument("--seq-len", type=int, default=16)
    shard.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    shard.add_argument("--out", help=argparse.SUPPRESS)
    shard.set_defaults(run=lambda a: shard_memory_worker(a) if a.worker else bench_shard_memory(a))
