"""scripts/bench.py end to end at small sizes: each subcommand measures and writes its table."""

import argparse
import math
import re
import sys

import pytest

from .engine_utils import ROOT, run


def script(name: str):
    """A module of ``scripts/`` (or of its ``benchmarks/``), imported as the scripts import."""
    import importlib

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def table_rows(report_text: str) -> list[list[str]]:
    """The data rows of the markdown tables in a report."""
    rows = [line.strip("|").split("|") for line in report_text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows if not set(row[0]) <= {"-"}]


def bench(tmp_path, *args: str) -> list[list[str]]:
    report = tmp_path / "bench.md"
    run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args, "--report", str(report)])
    text = report.read_text()
    assert "- command: `python" in text and "- machine:" in text and "- date:" in text
    return table_rows(text)


@pytest.mark.slow
def test_pattention_bench_reports_every_variant_and_the_memory_saving(tmp_path):
    rows = bench(tmp_path, "pattention", "--shapes", "2x5x8x8", "2x5x8x8x3", "--repeats", "2")
    data = {(row[0], row[1]): row for row in rows[1:]}  # (shape, variant) -> row
    for shape in ("B2·T5 d8 n8", "B2·T5 d8 n8 ×3 (q/k/v group)"):
        for variant in ("matmul-only bound", "fused", "plain", "official"):
            assert float(data[shape, variant][2]) > 0  # fwd+bwd ms
        assert float(data[shape, "matmul-only bound"][3]) == 1.0
        assert float(data[shape, "official"][5]) == 1.0  # saved bytes relative to the official
        assert float(data[shape, "fused"][5]) < float(data[shape, "plain"][5])


@pytest.mark.slow
def test_language_bench_matches_the_gpt_flops_and_measures_generation(tmp_path):
    rows = bench(
        tmp_path,
        "language",
        *("--batch-size", "2", "--seq-len", "32", "--repeats", "1", "--new-tokens", "4"),
    )
    measures = [row[2] for row in rows[1:]]
    assert measures[:3] == ["training, batch 2 x 32"] * 3  # ours, GPT-NeoX, nanoGPT
    assert any("KV cache on (transformers" in m for m in measures)
    assert any("nanoGPT" in m for m in measures)
    text = (tmp_path / "bench.md").read_text()
    flops = re.findall(r"([\d.]+) GFLOPs per sequence", text)
    assert len(flops) == 3 and len(set(flops)) == 1  # equal FLOPs by construction, and counted


@pytest.mark.slow
def test_clip_eval_bench_measures_memory_of_both_ways(tmp_path):
    rows = bench(tmp_path, "clip-eval", "--pairs", "300", "--full-matrix-pairs", "300")
    methods = {row[1]: row for row in rows[1:]}
    assert set(methods) == {"chunked (clip_metrics)", "whole N x N matrix"}
    for row in methods.values():
        assert row[0] == "300" and float(row[2]) >= 0 and float(row[3]) > 0


def test_digits_image_folder_is_the_embedded_split(tmp_path):
    digits_image_folder = script("benchmarks.matched").digits_image_folder
    root = digits_image_folder(tmp_path / "digits")
    counts = {split: len(list((root / split).rglob("*.png"))) for split in ("train", "validation")}
    assert counts == {"train": 1437, "validation": 360}
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]


def test_timm_grid_summary_counts_dead_starts_and_plots_each_cell(tmp_path):
    bench_timm_grid = script("bench_timm_grid")
    rows = [
        {"model": model, "lr": lr, "warmup": "1", "aug": "light", "seed": str(seed),
         "final": str(final), "best": str(final), "top1_per_epoch": "", "seconds": "1"}
        for model, lr, finals in (
            ("tf", "0.002", (12.0, 80.0, 90.0)),
            (bench_timm_grid.MATCHED_VIT_MICRO, "0.002", (70.0, 80.0, 90.0)),
            ("tf", "0.004", (29.9, 30.0, 60.0)),
        )
        for seed, final in enumerate(finals)
    ]  # fmt: skip
    table = bench_timm_grid.summarise(rows, dead_below=30.0)
    cells = {(row["lr"], row["model"]): row for row in table}
    assert cells[("0.002", "tf")]["dead starts"] == 1
    assert cells[("0.002", "tf")]["mean top-1"] == "60.7"
    vit = bench_timm_grid.VIT_LABELS[bench_timm_grid.MATCHED_VIT_MICRO]
    assert cells[("0.002", vit)]["dead starts"] == 0
    assert cells[("0.004", "tf")]["dead starts"] == 1  # 30.0 is not below 30
    bench_timm_grid.plot(rows, tmp_path / "grid.png", dead_below=30.0)
    assert (tmp_path / "grid.png").stat().st_size > 1000


@pytest.mark.slow
def test_lm_grid_trains_both_models_through_the_engine_and_counts_dead_starts(tmp_path):
    bench_lm_grid = script("bench_lm_grid")
    tiny = ["model.name=tiny", "train.steps=4", "train.eval_every=2", "train.batch_size=2"]
    tiny += ["data.seq_len=32", "optim.warmup_steps=2", "train.log_every=2"]
    models = (*bench_lm_grid.MODELS, "tokenformer key_init=official")
    run_dirs = {model: tmp_path / f"run{i}" for i, model in enumerate(models)}
    results = {
        model: bench_lm_grid.train_one("language", model, 3e-3, 0, run_dirs[model], tiny)
        for model in models
    }
    saved = (run_dirs["tokenformer key_init=official"] / ".hydra" / "config.yaml").read_text()
    assert "key_init: official" in saved  # a variant's settings reach the LM's config
    with pytest.raises(argparse.ArgumentTypeError, match="expected one of"):
        bench_lm_grid.model_variant("gpt key_init=official")
    for model, result in results.items():
        losses = result["val_loss_per_eval"]
        assert len(losses) == 2, model  # steps 2 and 4
        # 4 steps from the start: about ln(vocab) nats per byte, far above the unigram entropy
        assert all(4.0 < loss < 7.5 for loss in losses), (model, losses)
        assert (run_dirs[model] / "checkpoints").is_dir()  # trained by the engine's Trainer
    unigram = results["gpt"]["unigram"]
    assert unigram == results["tokenformer"]["unigram"]  # one validation set
    assert 3.0 < unigram < 5.0  # English bytes: ~4.5 bits = 3.1 nats, well under ln 256
    rows = [
        {"model": model, "lr": "0.003", "seed": str(seed), "final": str(final),
         "unigram": str(unigram)}
        for model, finals in (("tokenformer", (1.5, unigram + 0.1)), ("gpt", (2.0, 2.1)),
                              ("tokenformer key_init=official", (1.6, 1.7)))
        for seed, final in enumerate(finals)
    ]  # fmt: skip
    table = {row["model"]: row for row in bench_lm_grid.summarise(rows)}
    assert table["Tokenformer LM"]["dead starts"] == 1
    assert table["Tokenformer LM key_init=official"]["mean val loss"] == "1.650"
    assert table[bench_lm_grid.LABELS["gpt"]]["dead starts"] == 0
    bench_lm_grid.plot(rows, tmp_path / "grid.png", "language")
    assert (tmp_path / "grid.png").stat().st_size > 1000


@pytest.mark.slow
def test_lm_grid_runs_the_vision_job_with_timm_kwargs_as_settings(tmp_path):
    bench_lm_grid = script("bench_lm_grid")
    tiny = ["train.steps=2", "train.eval_every=2", "train.batch_size=8", "optim.warmup_steps=1"]
    tiny += ["data.num_workers=0", "train.log_every=1"]
    model = "tokenformer qkv_tokens=8 ffn_tokens=16 parametrization=mup"
    result = bench_lm_grid.train_one("vision", model, 2e-3, 0, tmp_path / "run", tiny)
    saved = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "qkv_tokens: 8" in saved and "parametrization: mup" in saved
    (loss,) = result["val_loss_per_eval"]
    assert 1.5 < loss < 3.5  # 2 steps from the start: about ln 10 nats
    # the digits' validation labels are near uniform over 10 classes: entropy just under ln 10
    assert math.log(10) - 0.05 < result["unigram"] <= math.log(10) + 1e-9


def test_the_matched_gpt_neox_differs_from_the_lm_only_in_pattention():
    """transformers' GPT-NeoX matched to the LM: same width, depth, heads, rotary fraction and
    base, tied embeddings; parameters and training FLOPs within 1 % of the Tokenformer's."""
    import torch

    matched_neox = script("benchmarks.matched").matched_neox
    from tokenformer_mm.flops import training_flops
    from tokenformer_mm.language.model import TokenformerLM, lm_config

    config = lm_config("small")
    neox, lm = matched_neox(config), TokenformerLM(config)
    hf = neox.model.config
    assert hf.rope_parameters["partial_rotary_factor"] == config.rotary_pct == 0.25
    assert hf.rope_parameters["rope_theta"] == config.rotary_base
    assert not hf.use_parallel_residual and hf.tie_word_embeddings
    assert neox.model.get_output_embeddings().weight is neox.model.get_input_embeddings().weight
    counts = [sum(p.numel() for p in m.parameters()) for m in (neox, lm)]
    assert counts[0] == pytest.approx(counts[1], rel=0.01)
    tokens = torch.randint(0, config.vocab_size, (2, 64))
    flops = [training_flops(m, lambda m=m: m(tokens, tokens)[1]) for m in (neox, lm)]
    assert flops[0] == pytest.approx(flops[1], rel=0.01)


@pytest.mark.slow
def test_the_adaptation_benchmark_runs_every_arm_at_equal_trainable_parameters(tmp_path):
    """Token adapters against peft's LoRA and full fine-tuning through the engine (tiny models,
    a few steps): one row per arm, the two adapter arms at the same trainable count, each
    shipped as a file far smaller than the model."""
    bench_adapters = script("bench_adapters")
    tiny = ["model.name=tiny", "data.seq_len=32", "data.num_workers=0"]
    bench_adapters.main(
        ["--work", str(tmp_path / "work"), "--csv", str(tmp_path / "a.csv"), "--plot",
         str(tmp_path / "a.png"), "--steps", "2", "--lrs", "3e-3", "--seeds", "0", "--jobs", "1",
         "--base-overrides", *tiny, "train.steps=2", "train.eval_every=2", "--overrides", *tiny]
    )  # fmt: skip
    rows = {row["arm"]: row for row in bench_adapters.read_done(tmp_path / "a.csv")}
    assert sorted(rows) == sorted(bench_adapters.ARMS)
    assert rows["tokens"]["trainable"] == rows["lora"]["trainable"]  # rank = tokens / 2
    assert int(rows["tokens"]["file_bytes"]) < int(rows["full-tf"]["file_bytes"]) / 2
    assert all(
        0 < float(row["new_loss"]) < 7 and 0 < float(row["old_loss"]) < 7 for row in rows.values()
    )
    assert (tmp_path / "a.png").stat().st_size > 1000
