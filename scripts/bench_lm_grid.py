"""Robustness through the engine: the Tokenformer LM vs the matched GPT over an lr grid.

    python scripts/bench_lm_grid.py --lrs 1e-3 3e-3 1e-2 --seeds 0 1 2 3 4

    # the image tower on the digits (settings are timm.create_model kwargs of the model)
    python scripts/bench_lm_grid.py --config-name vision --models "tokenformer qkv_tokens=24 \\
        ffn_tokens=96" --lrs 1e-3 2e-3 --seeds 0 --csv docs/lr_transfer_vision.csv

    # the learning-rate transfer sweep (docs/benchmarks.md, "Learning rate across token counts")
    python scripts/bench_lm_grid.py --overrides data=stdlib data.seq_len=128 train.steps=2000 \\
        --models "tokenformer qkv_tokens=16 proj_tokens=16 ffn_tokens=64 parametrization=mup" \\
        --lrs 7.5e-4 1.5e-3 3e-3 --seeds 0 --csv docs/lr_transfer_language.csv

Every (model, lr, seed) is one run of the language main job (``configs/language.yaml``: the
CPython help texts as bytes, AdamW, warm-up then cosine, clipping 1.0) through the engine's
``Trainer``, with only ``optim.lr`` and ``seed`` changed (``--config-name vision``: the vision
main job, Tokenformer only, with its ``model.kwargs`` as settings); the matched GPT is
transformers' GPT-NeoX with the LM's rotary, norms placement and tied embeddings, of equal FLOPs
and parameters (``neox``; ``benchmarks/matched.py``; ``gpt``: the earlier nanoGPT-style one with
learned positions), trained by the same Trainer on the same batches. A run ending with
validation loss above the unigram entropy of the validation tokens (what a model that ignores
context reaches; for images, the entropy of the validation labels) is a dead start.
``--overrides`` change the job for every run (Hydra overrides). Each finished run is appended
to ``--csv`` as it ends, so a stopped grid resumes (runs start in the order of ``--lrs``); the
summary goes to docs/benchmarks.md and a plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import REPORT, record, run_in_parallel
from benchmarks.matched import GPT, MATCHED_MLP_RATIO, matched_neox

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MODELS = ("tokenformer", "neox", "gpt")
LABELS = {
    "tokenformer": "Tokenformer LM",
    "neox": f"matched GPT-NeoX (rotary 25 %, mlp_ratio {MATCHED_MLP_RATIO:g})",
    "gpt": f"nanoGPT-style GPT, learned positions (mlp_ratio {MATCHED_MLP_RATIO:g})",
}


CONFIG_NAMES = ("language", "vision")
SETTINGS_PREFIX = {"language": "++model.overrides.", "vision": "++model.kwargs."}
LOSS_UNIT = {"language": "nats/byte", "vision": "nats"}


def model_variant(text: str) -> str:
    """A ``--models`` entry: ``tokenformer`` or ``gpt``, the Tokenformer with ``key=value``
    settings of its ``LMConfig`` after it (``"tokenformer key_init=official"``)."""
    base, *settings = text.split()
    if base not in MODELS or (settings and base != "tokenformer"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {MODELS}, or 'tokenformer key=value ...'"
        )
    if any(setting.count("=") != 1 for setting in settings):
        raise argparse.ArgumentTypeError(f"{text!r}: settings are key=value")
    return text


def label(model: str) -> str:
    base, *settings = model.split()
    return " ".join([LABELS[base], *settings])


def order(model: str) -> tuple[int, str]:
    return MODELS.index(model.split()[0]), model


FIELDS = ["model", "lr", "seed", "final", "unigram", "val_loss_per_eval", "seconds"]


def job_config(config_name: str, overrides: list[str]):
    """configs/<config_name>.yaml composed as scripts/train.py composes it, with ``overrides``."""
    from hydra import compose, initialize_config_dir

    from tokenformer_mm.train import register_schemas

    register_schemas()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def unigram_entropy(task, config_name: str) -> float:
    """Nats per prediction of the validation targets (next tokens, or image labels) under
    their own frequencies: the loss of a model that ignores its input."""
    counts: Counter[int] = Counter()
    for batch in task.eval_loader():
        if config_name == "vision":
            counts.update(batch["label"].tolist())
            continue
        from tokenformer_mm.language.model import IGNORE_INDEX
        from tokenformer_mm.language.task import block_targets

        targets = block_targets(batch)[1]
        counts.update(targets[targets != IGNORE_INDEX].tolist())
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def train_one(
    config_name: str, model: str, lr: float, seed: int, run_dir: Path, extra: list[str]
) -> dict[str, object]:
    """One engine run (``extra``: more config overrides); its validation losses and the
    unigram entropy."""
    from tokenformer_mm.train import Trainer, build_task

    prefix = SETTINGS_PREFIX[config_name]
    settings = [prefix + setting for setting in model.split()[1:]]
    overrides = [f"optim.lr={lr}", f"seed={seed}", f"run_dir={run_dir}", *settings, *extra]
    cfg = job_config(config_name, overrides)
    task = build_task(cfg)
    c = getattr(task, "config", None)  # the LM's
    if model == "gpt":
        task.build_model = lambda: GPT(
            c.vocab_size, c.context_length, c.dim, c.depth, c.num_heads, MATCHED_MLP_RATIO
        )
    elif model == "neox":
        task.build_model = lambda: matched_neox(c)
    summary = Trainer(cfg, task, run_dir).fit()
    with open(summary["metrics_csv"]) as f:
        losses = [float(row["val/loss"]) for row in csv.DictReader(f)]
    return {"val_loss_per_eval": losses, "unigram": unigram_entropy(task, config_name)}


def grid(args: argparse.Namespace) -> list[dict[str, object]]:
    return [
        {"model": m, "lr": lr, "seed": s}
        for lr, s, m in itertools.product(args.lrs, args.seeds, args.models)  # --lrs' order
    ]


def key(run: dict[str, object]) -> tuple[str, ...]:
    return (str(run["model"]), f"{float(run['lr']):g}", str(run["seed"]))


def read_done(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def run_grid(args: argparse.Namespace) -> None:
    """Run what ``args.csv`` does not hold yet, ``args.jobs`` engine runs at a time."""
    done = {key(row) for row in read_done(args.csv)}
    pending = [run for run in grid(args) if key(run) not in done]
    new_file = not args.csv.is_file()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        outs = [Path(tmp) / f"run{i}" for i in range(len(pending))]
        worker = [sys.executable, __file__, "--worker", args.config_name]
        commands = [
            [*worker, json.dumps(run), str(out), *args.overrides]
            for run, out in zip(pending, outs, strict=True)
        ]

        def write_row(i: int, seconds: float) -> None:
            result = json.loads((outs[i] / "result.json").read_text())
            losses = result["val_loss_per_eval"]
            writer.writerow(
                {**pending[i], "final": f"{losses[-1]:.4f}", "unigram": f"{result['unigram']:.4f}",
                 "val_loss_per_eval": " ".join(f"{v:.3f}" for v in losses),
                 "seconds": f"{seconds:.0f}"}
            )  # fmt: skip
            f.flush()

        logs = [out.with_suffix(".log") for out in outs]
        run_in_parallel(commands, logs, args.jobs, f"{len(pending)} runs", on_done=write_row)


def summarise(rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """One row per (lr, model): mean, std, min, max of the final loss and the dead starts."""
    cells: dict[tuple[float, str], list[dict[str, str]]] = {}
    for row in rows:
        cells.setdefault((float(row["lr"]), row["model"]), []).append(row)
    table = []
    for (lr, model), runs in sorted(cells.items(), key=lambda c: (c[0][0], order(c[0][1]))):
        finals = [float(r["final"]) for r in runs]
        dead = sum(float(r["final"]) > float(r["unigram"]) for r in runs)
        table.append(
            {"lr": f"{lr:g}", "model": label(model), "seeds": len(runs),
             "mean val loss": f"{np.mean(finals):.3f}", "std": f"{np.std(finals):.3f}",
             "min": f"{min(finals):.3f}", "max": f"{max(finals):.3f}", "dead starts": dead,
             "unigram entropy": f"{float(runs[0]['unigram']):.3f}"}
        )  # fmt: skip
    return table


def plot(rows: list[dict[str, str]], path: Path, config_name: str) -> None:
    """Final validation loss of every seed against lr, per model, with the unigram line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    lrs = sorted({float(r["lr"]) for r in rows})
    for i, model in enumerate(sorted({r["model"] for r in rows}, key=order)):
        mine = [r for r in rows if r["model"] == model]
        offset = (i - 0.5) * 0.08
        xs = [math.log2(float(r["lr"])) + offset for r in mine]
        ax.scatter(xs, [float(r["final"]) for r in mine], s=14, alpha=0.7, color=f"C{i}",
                   label=label(model))  # fmt: skip
        means = [np.mean([float(r["final"]) for r in mine if float(r["lr"]) == lr]) for lr in lrs]
        ax.plot(np.log2(lrs) + offset, means, color=f"C{i}")
    ax.axhline(float(rows[0]["unigram"]), color="grey", linestyle=":", linewidth=1,
               label="unigram entropy (dead start above)")  # fmt: skip
    ax.set_xticks(np.log2(lrs), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("lr")
    ax.set_ylabel(f"final validation loss ({LOSS_UNIT[config_name]})")
    ax.set_title(f"{config_name} main job through the engine", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def job_summary(cfg, config_name: str) -> str:
    """The data, models and batch of a job, for the notes under its table."""
    if config_name == "vision":
        return f"data `{cfg.data.name}`, `{cfg.model.name}`, batch {cfg.train.batch_size}"
    return (
        f"data `{cfg.data.name}` as bytes, `lm_{cfg.model.name}` and the baselines of equal "
        f"FLOPs and parameters (`benchmarks/matched.py`), batch {cfg.train.batch_size} x "
        f"{cfg.data.seq_len}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one run, in its own process: python bench_lm_grid.py --worker
        config_name, run, out = argv[1], json.loads(argv[2]), Path(argv[3])
        lr, seed = float(run["lr"]), int(run["seed"])
        result = train_one(config_name, run["model"], lr, seed, out, argv[4:])
        (out / "result.json").write_text(json.dumps(result))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", type=model_variant, default=list(MODELS),
        help="tokenformer, gpt, or 'tokenformer key=value ...' (LMConfig fields)",
    )  # fmt: skip
    parser.add_argument(
        "--config-name", choices=CONFIG_NAMES, default="language", help="the main job to run"
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="Hydra overrides of every run's job"
    )
    parser.add_argument("--title", default="Robustness through the engine")
    parser.add_argument("--csv", type=Path, default=DOCS / "robustness_language.csv")
    parser.add_argument("--plot", type=Path, default=DOCS / "robustness_language.png")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument(
        "--report-only", action="store_true", help="no runs: the table and plot of what is done"
    )
    args = parser.parse_args(argv)
    if args.config_name != "language" and any(m.split()[0] != "tokenformer" for m in args.models):
        parser.error(f"--config-name {args.config_name} runs Tokenformers only: {args.models}")
    if not args.report_only:
        run_grid(args)
    wanted = {key(run) for run in grid(args)}
    rows = [row for row in read_done(args.csv) if key(row) in wanted]
    plot(rows, args.plot, args.config_name)
    cfg = job_config(args.config_name, args.overrides)
    o, t = cfg.optim, cfg.train
    record(
        f"{args.title}: " + " vs ".join(label(m) for m in args.models),
        summarise(rows),
        notes=(
            f"`python scripts/train.py --config-name {args.config_name}` composed in-process "
            "with only `optim.lr` and `seed` changed (and "
            f"{' '.join(args.overrides) or 'no overrides'}), through the engine's Trainer: "
            + job_summary(cfg, args.config_name)
            + f", {t.steps} steps, {o.warmup_steps} warm-up steps then {o.schedule}, AdamW betas "
            f"{tuple(o.betas)}, weight decay {o.weight_decay}, clipping {o.grad_clip}. Final "
            f"validation loss ({LOSS_UNIT[args.config_name]}), population std over seeds "
            "(ddof 0); a dead start ends above the entropy of the validation targets' own "
            "frequencies. Every run: "
            f"`{args.csv.name}`; plot: `{args.plot.name}`."
        ),
        report=args.report,
    )


if __name__ == "__main__":
    main()
