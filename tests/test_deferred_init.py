"""Deferred init (FSDP2 / accelerate style): meta-device construction + ``to_empty`` + init."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import tokenformer_mm  # noqa: F401  (registers the tokenformer_* family with timm)
from tokenformer_mm import Pattention, grow_model
from tokenformer_mm.clip.text_tower import TokenformerTextEncoder
from tokenformer_mm.language import TokenformerLM
from tokenformer_mm.language.model import lm_config

BUILDERS = {
    "vision": lambda: timm.create_model("tokenformer_micro_patch4_32", num_classes=10),
    "language": lambda: TokenformerLM(lm_config("small")),
    "clip_text": lambda: TokenformerTextEncoder(
        32,
        context_length=16,
        vocab_size=100,
        width=64,
        heads=2,
        layers=2,
        qkv_tokens=64,
        ffn_tokens=128,
    ),
}


@pytest.mark.parametrize("tower", sorted(BUILDERS))
def test_meta_device_init_equals_eager_init(tower):
    """Same seed: every parameter and buffer (τ too) equal, and the RNG left in the same state."""
    build = BUILDERS[tower]
    torch.manual_seed(3)
    eager = build()
    next_draw_eager = torch.rand(8)
    torch.manual_seed(3)
    with torch.device("meta"):
        deferred = build()
    assert "tau=meta" in repr(deferred)  # printing a meta model works
    deferred.to_empty(device="cpu")
    deferred.init_weights()
    expected, got = eager.state_dict(), deferred.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert torch.equal(torch.rand(8), next_draw_eager)


def test_reset_parameters_rebuilds_tau_as_built_loaded_or_grown():
    with torch.device("meta"):
        layer = Pattention(16, 8, num_tokens=36)
    layer.to_empty(device="cpu")
    layer.tau.fill_(float("nan"))  # to_empty leaves garbage
    layer.reset_parameters()
    assert layer.tau.item() == 6.0

    grow_model(layer, factor=4, init="official")  # official growth: τ = sqrt(new n)
    layer.reset_parameters()
    assert layer.tau.item() == pytest.approx(12.0, rel=1e-7)

    grow_model(layer, factor=2)  # exact growth keeps τ, and so does a re-init
    layer.reset_parameters()
    assert layer.tau.item() == pytest.approx(12.0, rel=1e-7)

    loaded = Pattention(16, 8, num_tokens=288)  # τ = sqrt(288) until it loads the grown layer's
    loaded.load_state_dict(layer.state_dict())
    loaded.reset_parameters()
    assert loaded.tau.item() == pytest.approx(math.sqrt(144), rel=1e-7)

    # a τ saved in bf16 (sqrt(384) rounds to 19.625) is kept exactly, not re-derived from a count
    saved = {k: v.to(torch.bfloat16) for k, v in Pattention(16, 8, 384).state_dict().items()}
    fp32 = Pattention(16, 8, num_tokens=384)
    fp32.load_state_dict(saved)
    fp32.reset_parameters()
    assert fp32.tau.item() == saved["tau"].item() == 19.625
