"""μP over the token count (``parametrization="mup"``): the values scaled by ``base / n``.

What it must keep: the paper's function at the official ratios (so official checkpoints and
the default sizes compute as before), exact growth, and, after growth, the rate of a model built
at the grown size; a file is never read under another multiplier than it was trained with.
"""

import copy

import pytest
import timm
import torch

from tokenformer_mm import Pattention, grow_model
from tokenformer_mm.growth import grown_companion_state, load_grown, load_resized, model_shape
from tokenformer_mm.language.model import TokenformerLM, lm_config
from tokenformer_mm.weights import file_shape, save_weights

from .conftest import assert_equal_up_to_rounding, assert_same_function, block_stack


def lm(parametrization, **overrides):
    torch.manual_seed(0)
    return TokenformerLM(lm_config("tiny", parametrization=parametrization, **overrides))


def test_at_the_official_ratios_mup_is_the_papers_function_bit_for_bit():
    """n = d for q/k/v/proj and 4d for the FFN: multiplier 1, the same weights, the same output."""
    official = dict(qkv_tokens=32, proj_tokens=32, ffn_tokens=128)  # tiny: dim 32
    standard, mup = lm("standard", **official), lm("mup", **official)
    tokens = torch.randint(0, 320, (2, 24))
    assert torch.equal(mup(tokens, tokens)[0], standard(tokens, tokens)[0])
    torch.manual_seed(0)
    vit = dict(embed_dim=32, depth=2, num_heads=2, qkv_tokens=32, ffn_tokens=128, img_size=32)
    plain = timm.create_model("tokenformer_tiny_patch16_224", **vit, patch_size=8)
    torch.manual_seed(0)
    scaled = timm.create_model(
        "tokenformer_tiny_patch16_224", **vit, patch_size=8, parametrization="mup"
    )
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(scaled(images), plain(images))


def test_the_values_are_scaled_by_base_over_n_on_the_plain_and_fused_paths():
    x = torch.randn(4, 40, 24)
    for fused in (False, True):
        layer = Pattention(24, 16, 64, base_tokens=16, fused=fused)
        reference = Pattention(24, 16, 64, fused=False)
        reference.load_state_dict(layer.state_dict())
        with torch.no_grad():
            reference.value_tokens.mul_(16 / 64)
        assert layer.value_multiplier == 0.25
        assert_equal_up_to_rounding(layer(x), reference(x))


def test_a_group_of_mup_layers_runs_fused_as_each_layer_alone():
    block = block_stack(depth=1, parametrization="mup")[0]  # dim 32, 16 / 64 tokens: x2
    assert block.q.value_multiplier == 2.0 and block.ffn.value_multiplier == 2.0
    x = torch.randn(2, 40, 32)
    fused = block(x)
    for layer in (block.q, block.k, block.v, block.proj, block.ffn):
        layer.fused = False
    assert_equal_up_to_rounding(fused, block(x))


def test_under_mup_the_values_start_at_one_over_sqrt_n_of_their_fan_in():
    """Stored at wang · sqrt(n / b), used as b / n · V: effective std wang · sqrt(b / n), so each
    layer's output at init is the same size at every token count (the coordinate check)."""
    torch.manual_seed(0)
    x = torch.randn(64, 40, 32)
    sizes = [Pattention(32, 32, n, base_tokens=64, depth=2) for n in (64, 1024)]
    wang = 2 / (2 * 32**0.5)
    for layer in sizes:
        effective = layer.values().detach()
        expected = wang * (64 / layer.num_tokens) ** 0.5
        assert abs(effective.std().item() / expected - 1) < 0.05
    small, large = (layer(x).detach().pow(2).mean().sqrt().item() for layer in sizes)
    assert abs(large / small - 1) < 0.1
    paper = [Pattention(32, 32, n, depth=2) for n in (64, 1024)]
    small, large = (layer(x).detach().pow(2).mean().sqrt().item() for layer in paper)
    assert large / small > 3  # the paper's init: the output grows like sqrt(n)


def test_an_unknown_parametrization_is_named():
    with pytest.raises(ValueError, match=r"'mupp'.*'standard', 'mup'"):
        lm("mupp")
    with pytest.raises(ValueError, match="base_tokens must be a positive int, got 0"):
        Pattention(8, 8, 4, base_tokens=0)


@pytest.mark.parametrize("factor", [2, 3])
def test_growth_under_mup_is_exact_and_gives_the_multiplier_of_the_grown_size(factor):
    model = lm("mup")
    tokens = torch.randint(0, 320, (2, 24))
    before = model(tokens, tokens)[0]
    grow_model(model, factor=factor)
    assert_same_function(model(tokens, tokens)[0], before)
    built = lm("mup", qkv_tokens=16 * factor, proj_tokens=16 * factor, ffn_tokens=64 * factor)
    for grown, fresh in zip(model.modules(), built.modules(), strict=True):
        if isinstance(grown, Pattention):
            assert grown.num_tokens == fresh.num_tokens
            assert grown.value_multiplier == fresh.value_multiplier


def test_after_growth_the_old_values_move_at_the_grown_sizes_rate():
    """Exact growth keeps the loss and so the gradient of the effective values; with the moments
    rescaled, one AdamW step moves each old effective value by 1/factor of the step the model
    would have taken ungrown (a model built at the grown size takes base/n_new steps)."""
    model = lm("mup")
    tokens = torch.randint(0, 320, (4, 24))

    def adam(m):
        return torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0, eps=1e-30)

    optimizer = adam(model)
    for _ in range(3):
        model(tokens, tokens)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    ungrown = copy.deepcopy(model)
    ungrown_optimizer = adam(ungrown)
    ungrown_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # own step tensors
    grow_model(model, factor=2, optimizer=optimizer)

    def effective_values(m):
        return {n: layer.values().detach().clone() for n, layer in m.named_modules()
                if isinstance(layer, Pattention)}  # fmt: skip

    before = effective_values(model), effective_values(ungrown)
    for m, opt in ((model, optimizer), (ungrown, ungrown_optimizer)):
        m(tokens, tokens)[1].backward()
        opt.step()
    after = effective_values(model), effective_values(ungrown)
    for name, old in before[1].items():
        rows = old.shape[0]
        grown_step = after[0][name][:rows] - before[0][name][:rows]
        ungrown_step = after[1][name] - old
        assert_equal_up_to_rounding(grown_step, ungrown_step / 2, relative=1e-4)


def test_load_grown_and_the_ema_of_a_mup_model_keep_its_function():
    small = lm("mup")
    tokens = torch.randint(0, 320, (2, 24))
    big = lm("mup", qkv_tokens=32, proj_tokens=32, ffn_tokens=128)
    load_grown(big, small.state_dict())
    assert_same_function(big(tokens, tokens)[0], small(tokens, tokens)[0])
    grown = copy.deepcopy(small)
    grow_model(grown, factor=4)
    companion = copy.deepcopy(grown)
    companion.load_state_dict(grown_companion_state(grown, small.state_dict()))
    assert_same_function(companion(tokens, tokens)[0], small(tokens, tokens)[0])


def test_the_shape_record_carries_the_base_and_a_file_is_never_read_under_another(tmp_path):
    model = lm("mup")
    grow_model(model, factor=4)  # 64 / 256 tokens at base 32 / 128: multiplier 1/2
    save_weights(model, tmp_path / "model.safetensors")
    shape = file_shape(tmp_path / "model.safetensors")
    assert shape == model_shape(model)
    assert shape["base_tokens"]["blocks.0.q"] == 32 and shape["tokens"]["blocks.0.q"] == 64
    assert shape["base_tokens"]["blocks.0.ffn"] == 128 and shape["tokens"]["blocks.0.ffn"] == 256
    from safetensors.torch import load_file

    state = load_file(tmp_path / "model.safetensors")
    tokens = torch.randint(0, 320, (2, 24))
    reloaded = load_resized(lm("mup"), state, shape)
    assert torch.equal(reloaded(tokens, tokens)[0], model(tokens, tokens)[0])
    with pytest.raises(ValueError, match=r"blocks\.0\.\w+ was saved under μP's.*'mup'"):
        load_resized(lm("standard"), state, shape)
    standard = lm("standard")
    grow_model(standard, factor=4)
    assert "base_tokens" not in model_shape(standard)  # the paper's records are as before
    with pytest.raises(ValueError, match=r"saved under the paper's.*'standard'"):
        load_resized(lm("mup"), standard.state_dict(), model_shape(standard))
    at_base = lm("standard", qkv_tokens=32, proj_tokens=32, ffn_tokens=128)  # multiplier 1
    loaded = load_resized(lm("mup"), at_base.state_dict(), model_shape(at_base))
    assert torch.equal(loaded(tokens, tokens)[0], at_base(tokens, tokens)[0])


def first_step_of_effective_values(model, optimizer, loss_fn) -> dict[str, tuple[float, float]]:
    """Per Pattention: (largest move of an effective value in one step, lr · multiplier).

    Adam's first step moves every entry with a gradient by ``lr`` (``m / sqrt(v)`` is the sign
    of the gradient), so the effective values ``b / n · V`` move by exactly ``lr · b / n``."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Pattention)}
    before = {n: layer.values().detach().clone() for n, layer in layers.items()}
    loss_fn(model).backward()
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    return {
        n: ((layer.values().detach() - before[n]).abs().max().item(), lr * layer.value_multiplier)
        for n, layer in layers.items()
    }


def assert_moves_at_the_mup_rate(moves):
    multipliers = {round(expected, 12) for _, expected in moves.values()}
    assert len(multipliers) > 1 or 1.0 not in multipliers  # the test is about multipliers != 1
    for name, (moved, expected) in moves.items():
        assert abs(moved / expected - 1) < 1e-3, (name, moved, expected)


def test_timms_optimizer_factory_takes_mup_without_being_told():
    """What timm's train.py builds (create_optimizer_v2) over a model timm created."""
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = timm.create_model(
        "tokenformer_micro_patch4_32", parametrization="mup", qkv_tokens=384, ffn_tokens=768
    )  # dim 96: multipliers 1/4 (q/k/v/proj) and 1/2 (FFN)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.0)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    moves = first_step_of_effective_values(
        model, optimizer, lambda m: torch.nn.functional.cross_entropy(m(images), labels)
    )
    assert_moves_at_the_mup_rate(moves)


def test_the_hugging_face_trainers_optimizer_takes_mup_without_being_told(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import tokenformer_mm.language.hf  # noqa: F401  (registers the Auto classes)

    model = lm("mup", qkv_tokens=64, proj_tokens=64, ffn_tokens=64)  # dim 32: 1/2 and 2
    model.save_pretrained(tmp_path / "lm")
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").train()
    args = transformers.TrainingArguments(
        tmp_path / "out", learning_rate=1e-3, weight_decay=0.0, report_to=[], use_cpu=True
    )
    optimizer = transformers.Trainer(model=auto, args=args).create_optimizer()
    tokens = torch.randint(0, 320, (2, 24))
    moves = first_step_of_effective_values(
        auto, optimizer, lambda m: m(tokens, labels=tokens, use_cache=False).loss
    )
    assert_moves_at_the_mup_rate(moves)


def test_an_open_clip_text_tower_under_mup_trains_at_the_mup_rate():
    """open_clip's trainer builds a torch AdamW over the model's parameters (two groups)."""
    open_clip = pytest.importorskip("open_clip")
    import tokenformer_mm.clip  # noqa: F401  (registers the Tokenformer CLIP configs)

    text_cfg = open_clip.get_model_config("TokenformerCLIP-micro")["text_cfg"]
    text_cfg = {**text_cfg, "parametrization": "mup", "qkv_tokens": 192, "ffn_tokens": 192}
    torch.manual_seed(0)
    model = open_clip.create_model("TokenformerCLIP-micro", text_cfg=text_cfg)
    optimizer = torch.optim.AdamW(model.text.parameters(), lr=1e-3, weight_decay=0.0)
    text = torch.randint(0, 49408, (2, 20))
    moves = first_step_of_effective_values(model.text, optimizer, lambda m: m(text).pow(2).mean())
    assert_moves_at_the_mup_rate(moves)
