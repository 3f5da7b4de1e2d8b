"""Tokenformer against the matched ViT under the upstream trainers: timm's train.py, open_clip's."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import (
    record,
    run_variants,
    variant_settings,
)
from benchmarks.matched import (
    MATCHED_MLP_RATIO,
    MATCHED_VIT_CLIP,
    MATCHED_VIT_CLIP_CFGS,
    MATCHED_VIT_CLIP_LAYERSCALE,
    MATCHED_VIT_MICRO,
    MATCHED_VIT_MICRO_LAYERSCALE,
    digits_image_folder,
)


def mean_rows(rows: list[dict], variants: list[str], columns: dict[str, str]) -> list[dict]:
    """A "mean ± population std over seeds" row per variant, of the last column starting with
    each key of ``columns`` (the final epoch's), formatted with its value (".3f")."""
    means = []
    for variant in variants:
        runs = [r for r in rows if r["model"] == variant]
        mean = {**dict.fromkeys(rows[0], ""), "model": f"**{variant}: mean**"}
        for prefix, spec in columns.items():
            column = [c for c in rows[0] if c.startswith(prefix)][-1]
            values = [float(r[column]) for r in runs]
            mean[column] = f"**{np.mean(values):{spec}}** ± {np.std(values):{spec}}"
        if "collapsed" in rows[0]:
            mean["collapsed"] = f"{sum(r['collapsed'] == 'yes' for r in runs)} of {len(runs)}"
        means.append(mean)
    return means


def timm_train_command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    """timm's train.py, unmodified, on one variant ("model key=value ..."), through
    ``python -m tokenformer_mm`` (which registers the models)."""
    model, *kwargs = variant.split()
    command = [sys.executable, "-m", "tokenformer_mm", str(args.train_py)]
    command += ["--data-dir", str(args.data), "--model", model, "--num-classes", "10"]
    command += ["--img-size", "32", "--opt", "adamw", "--lr", str(args.lr), "-b", "32"]
    command += ["--epochs", str(args.epochs), "--seed", str(seed), "--device", "cpu"]
    command += ["--workers", "1", "--checkpoint-hist", "1", "--log-interval", "1000"]
    command += ["--output", str(out), "--experiment", "run"]
    command += (["--model-kwargs", *kwargs] if kwargs else []) + shlex.split(args.train_args)
    return command


def bench_timm_train(args: argparse.Namespace) -> None:
    """Variants under timm's own train.py, several processes at a time."""
    import csv

    if not args.train_py.is_file():
        raise SystemExit(
            f"no timm train.py at {args.train_py}: pass --train-py, the train.py of a "
            "pytorch-image-models checkout"
        )
    with tempfile.TemporaryDirectory() as tmp:
        args.data = digits_image_folder(Path(tmp) / "digits")
        rows = []
        for variant, seed, out, sec in run_variants(
            args, tmp, timm_train_command, "timm train.py runs"
        ):
            with (out / "run" / "summary.csv").open() as f:
                top1 = [float(row["eval_top1"]) for row in csv.DictReader(f)]
            epochs = sorted({max(1, len(top1) // 4), max(1, len(top1) // 2), len(top1)})
            row = {"model": variant, "seed": seed}
            row.update({f"epoch {e}": f"{top1[e - 1]:.1f}" for e in epochs})
            rows.append({**row, "best": f"{max(top1):.1f}", "seconds": f"{sec:.0f}"})
    rows += mean_rows(rows, args.variants, {f"epoch {args.epochs}": ".1f"})
    record(
        "timm's own train.py: Tokenformer vs the matched ViT",
        rows,
        notes=(
            "timm's train.py unmodified (`python -m tokenformer_mm <train.py> --model ...`): "
            "digits as an ImageFolder of 32x32 PNGs (1,437 train / 360 val), AdamW "
            f"lr {args.lr}, batch 32, {args.epochs} epochs, everything else timm's defaults "
            "(5 warmup epochs from lr 1e-5, cosine, weight decay 2e-5, label smoothing 0.1, "
            "RandomResizedCrop + flip + colour jitter)"
            f"{'; extra: ' + args.train_args if args.train_args else ''}. "
            "Validation top-1 %; chance is 10 %; ± is the population std over seeds (ddof 0)."
        ),
        report=args.report,
    )


def clip_train_command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    """open_clip's own trainer (``open_clip_train.main``) on the digits caption shards."""
    model = args.variant_models[variant]
    shards = args.shards
    command = [sys.executable, "-m", "tokenformer_mm", "-m", "open_clip_train.main"]
    command += ["--train-data", str(shards / "train-{000000..000007}.tar")]
    command += ["--val-data", str(shards / "val-{000000..000001}.tar")]
    command += ["--dataset-type", "webdataset", "--train-num-samples", "1437"]
    command += ["--val-num-samples", "360", "--model", model, "--batch-size", str(args.batch_size)]
    command += ["--lr", str(args.lr), "--warmup", str(args.warmup), "--epochs", str(args.epochs)]
    command += ["--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--workers", "1"]
    command += ["--precision", "fp32", "--device", "cpu", "--seed", str(seed), "--report-to", ""]
    command += ["--zeroshot-frequency", "0", "--save-frequency", "0", "--logs", str(out)]
    return [*command, "--name", "run", *shlex.split(args.train_args)]


def open_clip_config(name: str) -> dict:
    """A registered open_clip model config (ours included), as a dict to edit."""
    import open_clip

    import tokenformer_mm.clip  # noqa: F401  (registers the TokenformerCLIP configs)

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    return cfg


def bench_clip_train(args: argparse.Namespace) -> None:
    """TokenformerCLIP vs open_clip's ViT towers of its shape, under open_clip's own trainer."""
    import json

    from tokenformer_mm.clip.pairs import write_digits_pair_shards
    from tokenformer_mm.extras import unmet_requirements

    unmet = unmet_requirements("open_clip_torch", "training")
    if unmet:  # each run would fail at its first batch
        raise SystemExit(
            f"open_clip's trainer needs its pinned versions, found {'; '.join(unmet)}: "
            "pip install 'open_clip_torch[training]', or put them first on PYTHONPATH "
            "(pip install --target DIR 'webdataset==0.2.86'; PYTHONPATH=DIR)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        args.shards = write_digits_pair_shards(Path(tmp) / "shards")
        args.variant_models = {}
        for i, variant in enumerate(args.variants):  # a local-dir config for all but a name
            name, *settings = variant.split()
            if name in MATCHED_VIT_CLIP_CFGS:
                cfg = MATCHED_VIT_CLIP_CFGS[name]
            elif settings:  # "key=value" in the text tower's config (open_clip passes no
                # arguments to a timm image tower: its settings are the timm model's defaults)
                cfg = open_clip_config(name)
                cfg["text_cfg"].update(variant_settings(variant, settings))
            else:
                args.variant_models[variant] = variant
                continue
            folder = Path(tmp) / f"variant{i}"
            folder.mkdir()
            (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
            args.variant_models[variant] = f"local-dir:{folder}"
        rows = []
        chance = math.log(args.batch_size)
        for variant, seed, out, sec in run_variants(
            args, tmp, clip_train_command, "open_clip_train runs"
        ):
            lines = (out / "run" / "checkpoints" / "results.jsonl").read_text().splitlines()
            results = [json.loads(line) for line in lines]
            loss = [r["clip_val_loss"] for r in results]
            epochs = sorted({1, max(1, len(loss) // 2), len(loss)})
            row = {"model": variant, "seed": seed}
            row.update({f"val loss, epoch {e}": f"{loss[e - 1]:.3f}" for e in epochs})
            row["image-to-text R@1 %"] = f"{100 * results[-1]['image_to_text_R@1']:.1f}"
            row["collapsed"] = "yes" if min(loss) > 0.98 * chance else "no"
            rows.append({**row, "seconds": f"{sec:.0f}"})
    rows += mean_rows(rows, args.variants, {"val loss, epoch": ".3f", "image-to-text R@1 %": ".1f"})
    record(
        "open_clip's own trainer: Tokenformer towers vs ViT towers of the same shape",
        rows,
        notes=(
            "`python -m tokenformer_mm -m open_clip_train.main` (open_clip's trainer, unmodified) "
            "on the digits caption shards (`make_shards.py digits-pairs`: 1,437 train / 360 val "
            f"pairs), batch {args.batch_size}, lr {args.lr}, {args.warmup} warmup steps, cosine, "
            f"{args.epochs} epochs, open_clip's defaults otherwise (no gradient clipping, weight "
            "decay 0.2, fp32) and its ViT betas for both (0.9, 0.98, eps 1e-6)"
            f"{'; extra: ' + args.train_args if args.train_args else ''}. `matched-vit` is "
            "open_clip's own VisionTransformer / TextTransformer in TokenformerCLIP-micro's "
            f"widths, depths and heads (mlp_ratio {MATCHED_MLP_RATIO:g}); "
            "`matched-vit-layerscale` the same with LayerScale 0.1 in both towers, as the "
            "Tokenformer towers have (the comparison that isolates Pattention). Chance "
            f"validation loss is ln {args.batch_size} = {chance:.3f}; collapsed = never 2 % below "
            "it; ± is the population std over seeds (ddof 0)."
        ),
        report=args.report,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The subcommands of this file: timm-train, clip-train."""
    timm_train = commands.add_parser("timm-train", help="Tokenformer vs ViT under timm's train.py")
    timm_train.add_argument("--train-py", type=Path, required=True, help="timm's train.py")
    timm_train.add_argument(
        "--variants",
        nargs="+",
        default=["tokenformer_micro_patch4_32", MATCHED_VIT_MICRO_LAYERSCALE, MATCHED_VIT_MICRO],
        help='"model key=value ..." (the values go to --model-kwargs)',
    )
    timm_train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    timm_train.add_argument("--epochs", type=int, default=12)
    timm_train.add_argument("--lr", type=float, default=2e-3)
    timm_train.add_argument("--train-args", default="", help="more train.py arguments")
    timm_train.add_argument("--jobs", type=int, default=2, help="runs at a time")
    timm_train.set_defaults(run=bench_timm_train)
    clip_train = commands.add_parser("clip-train", help="CLIP towers under open_clip's trainer")
    clip_train.add_argument(
        "--variants",
        nargs="+",
        default=["TokenformerCLIP-micro", MATCHED_VIT_CLIP_LAYERSCALE, MATCHED_VIT_CLIP],
        help='open_clip model names, or "name key=value ..." (set in the text tower config)',
    )
    clip_train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    clip_train.add_argument("--epochs", type=int, default=8)
    clip_train.add_argument("--lr", type=float, default=2e-3)
    clip_train.add_argument("--batch-size", type=int, default=32)
    clip_train.add_argument("--warmup", type=int, default=45, help="steps (45 = one epoch)")
    clip_train.add_argument("--train-args", default="", help="more open_clip_train arguments")
    clip_train.add_argument("--jobs", type=int, default=2, help="runs at a time")
    clip_train.set_defaults(run=bench_clip_train)
