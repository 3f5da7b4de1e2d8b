"""Token-only adaptation against LoRA and full fine-tuning, on a domain shift (issue 36).

    python scripts/bench_adapters.py                 # run what the CSV lacks, then report
    python scripts/bench_adapters.py --report-only   # the table and plot of what is done

The base models are the language main job's (the CPython help texts, ``configs/language.yaml``,
seed 0): the Tokenformer LM and its matched GPT-NeoX (``benchmarks/matched.py``), each trained
once through the engine. Each is then adapted to the standard library's source (``data=stdlib``:
code, not prose) for ``--steps`` steps through the engine, by one of these arms:

    tokens      ``--tokens`` key-value tokens appended to every Pattention (``adapt.*``), the rest
                frozen (tokenformer_mm.adapters)
    lora        peft's LoRA on NeoX's four linear layers per block, of the rank whose trainable
                parameters equal the tokens arm's (``lora_rank``)
    full-tf     every parameter of the Tokenformer
    full-neox   every parameter of the GPT-NeoX

Each arm at each of ``--lrs`` on the first seed, its best rate on ``--seeds``. Per run: the
validation loss on the new domain, on the old one (what was forgotten), the trainable
parameters, the size of the file that ships it (the adapter alone where there is one) and the
seconds per step. Every finished run is appended to ``--csv`` as it ends (a stopped benchmark
resumes; a fresh clone with the CSV runs only what it lacks).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_lm_grid import job_config, read_done

from benchmarks.common import run_in_parallel
from benchmarks.matched import MATCHED_MLP_RATIO, matched_neox

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ARMS = ("tokens", "lora", "full-tf", "full-neox")
FIELDS = ["arm", "lr", "seed", "new_loss", "old_loss", "trainable", "file_bytes", "s_per_step"]
ADAPTED_DATA = ["data=stdlib"]  # the new domain: Python source instead of help texts


def lora_rank(tokens: int) -> int:
    """The LoRA rank with the trainable parameters of ``tokens`` tokens per Pattention: a block
    has 5 Pattentions of d -> d, 2·d·m each, and NeoX's 4 linear layers take r·(d + 3d),
    r·(d + d), r·(d + 6d), r·(6d + d) (MLP ``MATCHED_MLP_RATIO`` = 6): 20·d·r, so r = m / 2."""
    per_block = 4 + 2 + 2 * (1 + MATCHED_MLP_RATIO)
    return max(1, round(10 * tokens / per_block))


def base_run(model: str, work: Path, overrides: list[str] = ()) -> Path:
    """The main job's model (``tokenformer`` or ``neox``) trained once (``overrides``: of the
    main job, for a smaller one), its run directory."""
    from tokenformer_mm.checkpoint_layout import newest_checkpoint
    from tokenformer_mm.train import Trainer, build_task

    run_dir = work / f"base-{model}"
    if newest_checkpoint(run_dir / "checkpoints") is not None:
        return run_dir
    cfg = job_config("language", [f"run_dir={run_dir}", "seed=0", *overrides])
    task = build_task(cfg)
    if model == "neox":
        task.build_model = lambda: matched_neox(task.config)
    Trainer(cfg, task, run_dir).fit()
    return run_dir


def neox_from(run_dir: Path, config, lora: int | None):
    """The base GPT-NeoX with its trained weights; with ``lora``, peft's LoRA of that rank."""
    from tokenformer_mm.checkpoint_layout import newest_checkpoint
    from tokenformer_mm.train import checkpoint

    model = matched_neox(config)
    model.load_state_dict(checkpoint.load_weights(newest_checkpoint(run_dir / "checkpoints")))
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
        model.model = get_peft_model(model.model, LoraConfig(r=lora, lora_alpha=2 * lora,
                                                             target_modules=targets))  # fmt: skip
    return model


def adapt_one(run: dict, out: Path, work: Path, tokens: int, extra: list[str]) -> dict:
    """One adaptation run through the engine, measured on both domains."""
    import torch

    from tokenformer_mm.checkpoint_layout import newest_checkpoint
    from tokenformer_mm.train import Trainer, build_task

    arm, model = run["arm"], "neox" if run["arm"] in ("lora", "full-neox") else "tokenformer"
    base = base_run(model, work)
    overrides = [f"optim.lr={run['lr']}", f"seed={run['seed']}", f"run_dir={out}", *extra]
    if arm == "tokens":
        overrides += [f"adapt.num_tokens={tokens}", f"adapt.base={base}"]
    elif arm == "full-tf":
        overrides += [f"growth.init_from={newest_checkpoint(base / 'checkpoints')}"]
    cfg = job_config("language", [*ADAPTED_DATA, *overrides])
    task = build_task(cfg)
    if model == "neox":
        rank = lora_rank(tokens) if arm == "lora" else None
        task.build_model = lambda: neox_from(base, task.config, rank)
    trainer = Trainer(cfg, task, out)
    began = time.perf_counter()
    trainer.fit()
    seconds = (time.perf_counter() - began) / cfg.train.steps
    old = build_task(job_config("language", [f"run_dir={out}-old", *extra]))  # help texts
    with torch.no_grad():
        old_loss = old.evaluate(trainer.model, old.eval_loader())["val/loss"]
        new_loss = task.evaluate(trainer.model, task.eval_loader())["val/loss"]
    last = newest_checkpoint(out / "checkpoints")
    if arm == "tokens":
        shipped = next(last.glob("adapter_*.safetensors")).stat().st_size
    elif arm == "lora":
        trainer.model.model.save_pretrained(out / "lora")
        shipped = (out / "lora" / "adapter_model.safetensors").stat().st_size
    else:
        shipped = (last / "model.safetensors").stat().st_size
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"new_loss": float(new_loss), "old_loss": float(old_loss), "trainable": trainable,
            "file_bytes": shipped, "s_per_step": seconds}  # fmt: skip


def key(run: dict) -> tuple[str, str, str]:
    return (str(run["arm"]), f"{float(run['lr']):g}", str(run["seed"]))


def run_all(args: argparse.Namespace, runs: list[dict]) -> None:
    """The runs ``args.csv`` lacks, two at a time, each appended to it as it ends."""
    done = {key(row) for row in read_done(args.csv)}
    pending = [run for run in runs if key(run) not in done]
    if not pending:
        return
    for model in ("tokenformer", "neox"):  # once, before the runs that start from them
        base_run(model, args.work, args.base_overrides)
    new_file = not args.csv.is_file()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        outs = [Path(tmp) / f"run{i}" for i in range(len(pending))]
        worker = [sys.executable, __file__, "--worker", str(args.work), str(args.tokens)]
        commands = [
            [*worker, json.dumps(run), str(out), *args.overrides]
            for run, out in zip(pending, outs, strict=True)
        ]

        def write_row(i: int, seconds: float) -> None:
            result = json.loads((outs[i] / "result.json").read_text())
            writer.writerow({**pending[i], **{k: f"{v:.4g}" if isinstance(v, float) else v
                                              for k, v in result.items()}})  # fmt: skip
            f.flush()

        logs = [out.with_suffix(".log") for out in outs]
        run_in_parallel(commands, logs, args.jobs, f"{len(pending)} adaptation runs", write_row)


def best_lrs(rows: list[dict]) -> dict[str, float]:
    """Each arm's rate of lowest mean new-domain loss."""
    cells: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        cells.setdefault((row["arm"], float(row["lr"])), []).append(float(row["new_loss"]))
    best: dict[str, tuple[float, float]] = {}
    for (arm, lr), losses in cells.items():
        if arm not in best or statistics.mean(losses) < best[arm][1]:
            best[arm] = (lr, statistics.mean(losses))
    return {arm: lr for arm, (lr, _) in best.items()}


def stat(rows: list[dict], name: str, fmt: str = ".3f") -> str:
    """Mean ± population std (ddof 0) over ``rows`` of a measure (the mean alone for one row)."""
    values = [float(r[name]) for r in rows]
    spread = f" ± {statistics.pstdev(values):{fmt}}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{fmt}}{spread}"


def table(rows: list[dict]) -> str:
    """Each arm at its best rate: mean ± std over its seeds of every measure."""
    lines = [
        "| arm | lr | seeds | new domain (nats/byte) | old domain (forgetting) | trainable "
        "parameters | shipped file | s / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, lr in sorted(best_lrs(rows).items(), key=lambda a: ARMS.index(a[0])):
        mine = [r for r in rows if r["arm"] == arm and float(r["lr"]) == lr]
        size = float(mine[0]["file_bytes"]) / 1024
        trainable = int(float(mine[0]["trainable"]))
        lines.append(
            f"| {arm} | {lr:g} | {len(mine)} | {stat(mine, 'new_loss')} | "
            f"{stat(mine, 'old_loss')} | {trainable:,} | {size:,.0f} kB | "
            f"{stat(mine, 's_per_step')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """New-domain loss against forgetting, every run, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for i, arm in enumerate(ARMS):
        mine = [r for r in rows if r["arm"] == arm]
        ax.scatter([float(r["old_loss"]) for r in mine], [float(r["new_loss"]) for r in mine],
                   color=f"C{i}", s=16, label=arm)  # fmt: skip
    ax.set_xlabel("old-domain validation loss (help texts): forgetting")
    ax.set_ylabel("new-domain validation loss (stdlib source)")
    ax.set_title("adaptation runs, every rate and seed", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one run in its own process
        work, tokens, run, out = Path(argv[1]), int(argv[2]), json.loads(argv[3]), Path(argv[4])
        result = adapt_one(run, out, work, tokens, argv[5:])
        (out / "result.json").write_text(json.dumps(result))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--tokens", type=int, default=16, help="tokens per Pattention")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of each run")
    parser.add_argument(
        "--base-overrides", nargs="*", default=[], help="Hydra overrides of the base runs"
    )
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "tokenformer-mm" / "adapters")  # fmt: skip
    parser.add_argument("--csv", type=Path, default=DOCS / "adapters_language.csv")
    parser.add_argument("--plot", type=Path, default=DOCS / "adapters_language.png")
    parser.add_argument("--report-only", action="store_true", help="no runs: table and plot")
    args = parser.parse_args(argv)
    args.overrides = [f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                      f"train.checkpoint_every={args.steps}", *args.overrides]  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        screen = [{"arm": a, "lr": lr, "seed": args.seeds[0]} for lr in args.lrs for a in args.arms]
        run_all(args, screen)
        best = best_lrs([r for r in read_done(args.csv) if r["arm"] in args.arms])
        run_all(args, [{"arm": a, "lr": best[a], "seed": s} for a in args.arms for s in args.seeds])
    rows = [r for r in read_done(args.csv) if r["arm"] in args.arms]
    if rows:
        plot(rows, args.plot)
        print(table(rows))


if __name__ == "__main__":
    main()
