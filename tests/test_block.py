import pytest
import torch

from tokenformer_mm import TokenformerBlock

from .conftest import assert_equal_up_to_rounding, block_stack


def causal_block(**kwargs):
    return TokenformerBlock(32, 4, 16, 16, 64, causal=True, rotary_pct=0.25, **kwargs).eval()


def test_block_maps_shape_and_composes_in_sequential():
    model = block_stack(depth=3)
    x = torch.randn(2, 9, 32)
    y = model(x)
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_causal_output_ignores_future_tokens():
    block = causal_block()
    x = torch.randn(2, 10, 32)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, 32)
    torch.testing.assert_close(block(x)[:, :6], block(changed)[:, :6])
    assert not torch.allclose(block(x)[:, 6:], block(changed)[:, 6:])


def test_bidirectional_output_sees_future_tokens():
    block = TokenformerBlock(32, 4, 16, 16, 64).eval()
    x = torch.randn(1, 10, 32)
    changed = x.clone()
    changed[:, 6:] = torch.randn(1, 4, 32)
    assert not torch.allclose(block(x)[:, :6], block(changed)[:, :6])


@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 3, 3]])
def test_incremental_decoding_equals_full_forward(chunks):
    block = causal_block()
    x = torch.randn(2, sum(chunks), 32)
    full = block(x)
    past, outputs, start = None, [], 0
    for size in chunks:
        y, past = block.forward_cached(x[:, start : start + size], past)
        outputs.append(y)
        start += size
    assert past[0].shape == (2, 4, sum(chunks), 8)
    assert_equal_up_to_rounding(torch.cat(outputs, dim=1), full)


@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask_excludes_padded_keys(causal):
    """Real tokens see only real tokens: left padding, so a causal block would see the pads."""
    block = TokenformerBlock(32, 4, 16, 16, 64, causal=causal).eval()
    real = torch.randn(1, 6, 32)
    padded = torch.cat([torch.randn(1, 3, 32), real], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    assert_equal_up_to_rounding(block(padded, mask)[:, 3:], block(real))
    assert not torch.allclose(block(padded)[:, 3:], block(real), atol=1e-3)


def test_fully_padded_query_stays_finite():
    block = causal_block()
    x = torch.randn(2, 5, 32)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])  # left padding
    assert torch.isfinite(block(x, mask)).all()


def test_rotary_breaks_permutation_equivariance():
    x = torch.randn(1, 8, 32)
    perm = torch.randperm(8)
    plain = TokenformerBlock(32, 4, 16, 16, 64).eval()
    assert_equal_up_to_rounding(plain(x)[:, perm], plain(x[:, perm]))
    rotary = TokenformerBlock(32, 4, 16, 16, 64, rotary_pct=1.0).eval()
    assert not torch.allclose(rotary(x)[:, perm], rotary(x[:, perm]), atol=1e-4)


def test_rotary_attention_depends_on_relative_position_only():
    """Rotary property: shifting every position by the same offset leaves attention unchanged."""
    block = causal_block()
    x = torch.randn(1, 6, 32)
    prefix = torch.randn(1, 4, 32)
    _, past = block.forward_cached(prefix)
    # Attending only to the new tokens (prefix masked out) at offset 4 must equal offset 0.
    mask = torch.tensor([[False] * 4 + [True] * 6])
    shifted, _ = block.forward_cached(x, past, key_padding_mask=mask)
    assert_equal_up_to_rounding(shifted, block(x))


def test_bad_heads_and_mask_are_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        TokenformerBlock(30, 4, 8, 8, 8)
    block = TokenformerBlock(32, 4, 8, 8, 8)
    with pytest.raises(ValueError, match="covers 3 keys, expected 5"):
        block(torch.randn(1, 5, 32), torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_block_stack_scripts_and_traces():
    """TorchScript and torch.fx work on blocks, as timm's tooling expects of a model."""
    model = block_stack(depth=2, causal=True, rotary_pct=0.5).eval()
    x = torch.randn(2, 5, 32)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))


def test_zero_residual_branches_make_the_block_the_identity_and_it_trains():
    block = causal_block()
    block.zero_residual_branches()
    x = torch.randn(2, 7, 32)
    assert torch.equal(block(x), x)
    block(x).pow(2).sum().backward()
    assert block.ffn.value_tokens.grad.abs().max() > 0  # the zero values move at the first step
    assert block.proj.value_tokens.grad.abs().max() > 0


def test_layer_scale_scales_each_residual_branch_and_trains():
    plain = causal_block()
    scaled = causal_block(init_values=0.25)
    missing, unexpected = scaled.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["ls1.gamma", "ls2.gamma"] and not unexpected
    assert torch.equal(scaled.ls1.gamma, torch.full((32,), 0.25))
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        scaled.ls1.gamma.fill_(1.0)
        scaled.ls2.gamma.fill_(1.0)
    assert_equal_up_to_rounding(scaled(x), plain(x))  # gamma = 1 is the plain block
    with torch.no_grad():  # the attention branch alone: FFN values zero, its gamma a quarter
        plain.ffn.value_tokens.zero_()
        scaled.ffn.value_tokens.zero_()
        scaled.ls1.gamma.fill_(0.25)
    attention_branch = plain(x) - x
    torch.testing.assert_close(scaled(x), x + 0.25 * attention_branch)
    scaled(x).pow(2).sum().backward()
    assert scaled.ls1.gamma.grad.abs().max() > 0  # gamma trains
