"""The CUDA paths, run where a GPU is present (skipped elsewhere; CI has none).

    python -m pytest tests/gpu -p no:cacheprovider     # on a CUDA machine

Each test compares a GPU computation with its reference (the plain path, eager mode, the CPU),
with tolerances set by the compute dtype's rounding, as the CPU suite does.
"""

from __future__ import annotations

import pytest
import torch

from tokenformer_mm import Pattention, TokenformerBlock, grow_model
from tokenformer_mm.pattention import NORMS
from tokenformer_mm.train import Trainer, build_task
from tokenformer_mm.train.start import use_bf16
from tokenformer_mm.vision.data import DeviceImageTransform

from ..conftest import assert_equal_up_to_rounding
from ..engine_utils import TINY_VISION, compose_config
from ..test_language import all_logits, left_pad, tiny_lm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
BF16_OK = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


@pytest.mark.skipif(not BF16_OK, reason="needs a GPU with bf16")
@pytest.mark.parametrize("norm", NORMS)
def test_fused_path_under_cuda_bf16_autocast_matches_plain(norm):
    """One dtype policy on both paths (docs/design.md, "Pattention"): forward values equal up
    to one bf16 rounding (2^-7 of the scale), gradients within bf16 accumulation error."""
    layer = Pattention(256, 192, 1024, norm=norm).to(CUDA)  # above FUSED_MIN_SCORES
    x = torch.randn(4, 64, 256, device=CUDA)
    results = []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        results.append([out.float(), layer.key_tokens.grad, layer.value_tokens.grad])
    (fused_out, *fused_grads), (plain_out, *plain_grads) = results
    scale = plain_out.abs().max().item()
    torch.testing.assert_close(fused_out, plain_out, rtol=0, atol=2**-7 * scale)
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        assert fused.dtype == torch.float32  # gradients land on the fp32 parameters
        assert (fused - plain).abs().max().item() <= 0.03 * plain.abs().max().item()


def test_inductor_compiles_the_fused_block_forward_and_backward():
    block = TokenformerBlock(128, 4, 256, 256, 512).to(CUDA)
    x = torch.randn(4, 128, 128, device=CUDA, requires_grad=True)
    compiled = torch.compile(block)  # the default backend: inductor, Triton kernels
    compiled(x).square().sum().backward()
    grads = [x.grad] + [p.grad for p in block.parameters()]
    x.grad = None
    block.zero_grad(set_to_none=True)
    block(x).square().sum().backward()
    for got, expected in zip(grads, [x.grad] + [p.grad for p in block.parameters()], strict=True):
        assert_equal_up_to_rounding(got, expected, relative=1e-4)  # fp32, reordered sums


def test_sdpa_with_padding_masks_and_the_kv_cache_on_cuda():
    model = tiny_lm().to(CUDA)
    prompts = [torch.randint(0, 320, (n,), device=CUDA) for n in (3, 9, 6)]
    tokens, mask = left_pad(prompts)
    tokens, mask = tokens.to(CUDA), mask.to(CUDA)
    with torch.no_grad():
        batched = all_logits(model, tokens, attention_mask=mask)
        for i, prompt in enumerate(prompts):
            alone = all_logits(model, prompt[None])[0]
            assert_equal_up_to_rounding(batched[i, -len(prompt) :], alone, relative=1e-4)
    new = 20
    cached = model.generate(tokens, new, temperature=0, attention_mask=mask, use_cache=True)
    full = model.generate(tokens, new, temperature=0, attention_mask=mask, use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.skipif(not BF16_OK, reason="needs a GPU with bf16")
@pytest.mark.parametrize(
    "domain, overrides",
    [
        ("vision", TINY_VISION),
        ("language", ["data.seq_len=64", "train.batch_size=8"]),
        ("clip", ["train.batch_size=16"]),
    ],
)
def test_a_bf16_training_run_of_each_tower_with_growth(tmp_path, domain, overrides):
    """precision=auto picks bf16 here; a few steps train, and growth on the GPU keeps the loss."""
    steps = ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=6", "train.log_every=1"]
    cfg = compose_config(
        domain,
        [*overrides, *steps, "growth.schedule=[{step: 3, factor: 2}]", f"run_dir={tmp_path}"],
    )
    trainer = Trainer(cfg, build_task(cfg), tmp_path)
    assert trainer.device.type == "cuda" and trainer.use_bf16
    trainer.fit()
    event = trainer.growth_events[-1]
    before, after = event["val_before"], event["val_after"]
    for key in before:  # exact growth: equal up to bf16 rounding of the outputs
        assert after[key] == pytest.approx(before[key], rel=2e-2, abs=1e-3), key
    losses = [row["train/loss"] for row in trainer.eval_rows]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_precision_auto_is_bf16_only_where_the_gpu_supports_it():
    assert use_bf16("auto", CUDA) == BF16_OK
    assert use_bf16("fp32", CUDA) is False
    assert use_bf16("auto", torch.device("cpu")) is False


def test_device_image_transform_on_cuda_equals_the_cpu():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(6)
    transform = DeviceImageTransform(mean, std, hflip=0.0)
    cpu, _ = transform(images, labels, train=True)
    gpu, gpu_labels = transform(images.to(CUDA), labels.to(CUDA), train=True)
    assert gpu.device.type == "cuda" and torch.equal(gpu_labels.cpu(), labels)
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_growth_on_the_gpu_is_exact_and_the_grown_model_trains():
    model = torch.nn.Sequential(*[TokenformerBlock(64, 4, 64, 64, 256) for _ in range(2)]).to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 16, 64, device=CUDA)
    model(x).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        before = model(x)
    grow_model(model, factor=2, optimizer=optimizer, seed=0)
    with torch.no_grad():
        assert_equal_up_to_rounding(model(x), before)
    assert model[0].ffn.key_tokens.is_cuda and model[0].ffn.num_tokens == 512
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()
    assert model[0].ffn.key_tokens[256:].abs().sum() > 0  # the new tokens moved
