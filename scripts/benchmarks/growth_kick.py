"""How far new parameter tokens move in the first AdamW step after growth."""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from benchmarks.common import (
    record,
)
from benchmarks.matched import (
    byte_stream,
)


def first_update_of_new_rows(
    args: argparse.Namespace, seeded: bool | None, beta2: float
) -> list[float]:
    """|first AdamW update| / lr of the new key rows after growing a trained LM x2 (exact):
    ``seeded`` True: the growth utility's moment seeding; False: zero moments (its hook removed,
    the kick issue 14 measured); None: a fresh AdamW over the grown model (the reference)."""
    from tokenformer_mm import Pattention, grow_model
    from tokenformer_mm.growth.optimizer import NEW_ROWS
    from tokenformer_mm.language import TokenformerLM, lm_config

    torch.manual_seed(args.seed)
    train = byte_stream("train")
    model = TokenformerLM(lm_config(args.model, context_length=args.seq_len))

    def batch() -> torch.Tensor:
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch_size,)).tolist()
        return torch.stack([train[s : s + args.seq_len + 1] for s in starts])

    def adam_step(optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(tokens[:, :-1], tokens[:, 1:])[1].backward()
        optimizer.step()

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, beta2))
    for _ in range(args.steps):
        adam_step(optimizer, batch())
    grow_model(model, factor=2, optimizer=None if seeded is None else optimizer)
    if seeded is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, beta2))
    elif not seeded:  # zero moments: drop the seeding growth put in the optimizer's state
        for state in optimizer.state.values():
            state.pop(NEW_ROWS, None)
    layers = [m for m in model.modules() if isinstance(m, Pattention)]
    before = [m.key_tokens.detach()[m.num_tokens // 2 :].clone() for m in layers]
    adam_step(optimizer, batch())
    moved = [
        (m.key_tokens.detach()[m.num_tokens // 2 :] - old).abs().flatten()
        for m, old in zip(layers, before, strict=True)
    ]
    return (torch.cat(moved) / args.lr).tolist()


def bench_growth_kick(args: argparse.Namespace) -> None:
    """How far the new parameter tokens move in the first step after growth, against lr."""
    rows = []
    cases = {
        "zero moments (no seeding: before the fix)": False,
        "seeded moments (grow_model(..., optimizer=))": True,
        "a fresh AdamW over the grown model (reference)": None,
    }
    for beta2 in args.beta2:
        for name, seeded in tqdm(cases.items(), desc=f"beta2 {beta2}"):
            moved = torch.tensor(first_update_of_new_rows(args, seeded, beta2))
            rows.append(
                {
                    "β2": str(beta2),
                    "optimizer state of the new rows": name,
                    "median |update| / lr": f"{moved.median():.3f}",
                    "max |update| / lr": f"{moved.max():.3f}",
                }
            )
    record(
        "Growth: the first update of the new parameter tokens",
        rows,
        notes=(
            f"TokenformerLM {args.model} trained {args.steps} AdamW steps (lr {args.lr}, β1 0.9, "
            f"batch {args.batch_size} x {args.seq_len} bytes of the CPython help texts), grown "
            "x2 with init=exact, then one step; all entries of the new key rows. Zero moments "
            "with the parameter's shared step count t move each entry by (1 - β1) / (1 - β1^t) "
            "x sqrt((1 - β2^t) / (1 - β2)) x lr, which grows with t to (1 - β1) / sqrt(1 - β2): "
            "3.2 at β2 0.999 (bias corrections ~1 late in training), 0.45 at 0.95. Seeding the "
            "second moment to g² as in a fresh AdamW and leaving the first at zero: (1 - β1) x lr, "
            "ramping up over ~10 steps (a re-warmup of the new rows only). A fresh AdamW moves "
            "each entry by lr."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: growth-kick."""
    kick = commands.add_parser("growth-kick", help="the first update of new tokens after growth")
    kick.add_argument("--model", default="small", help="a name in tokenformer_mm.language.CONFIGS")
    kick.add_argument("--steps", type=int, default=200, help="AdamW steps before growing")
    kick.add_argument("--lr", type=float, default=3e-3)
    kick.add_argument("--batch-size", type=int, default=16)
    kick.add_argument("--seq-len", type=int, default=128)
    kick.add_argument("--seed", type=int, default=0)
    kick.add_argument("--beta2", type=float, nargs="+", default=[0.999, 0.95])
    kick.set_defaults(run=bench_growth_kick)
