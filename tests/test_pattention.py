import math

import pytest
import torch

from tokenformer_mm import Pattention

from .reference import official_pattention


def reference_theta(scores: torch.Tensor, norm: str, n: int, eps: float = 1e-5) -> torch.Tensor:
    """theta(s) written from docs/design.md in float64, independently of the library."""
    s = scores.double()
    tau = math.sqrt(n)

    def gelu(z):
        return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))

    def l2(z):
        return z.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)

    if norm == "l2_norm_gelu":
        return gelu(s / l2(s) * tau)
    if norm == "gelu_l2_norm":
        return gelu(s) / l2(gelu(s)) * tau
    shifted = (s - s.max(-1, keepdim=True).values).exp()
    return shifted / shifted.sum(-1, keepdim=True) * tau**2


def assert_close_to_fp64(fp32: torch.Tensor, fp64: torch.Tensor) -> None:
    """fp32 rounds at 2^-24 ≈ 6e-8 per operation; over the few-dozen-term sums of one layer the
    error stays below 1e-6 of the outputs' scale (an element near 0 gets no relative slack)."""
    torch.testing.assert_close(fp32.double(), fp64, rtol=0, atol=1e-6 * fp64.abs().max().item())


@pytest.mark.parametrize("norm", ["l2_norm_gelu", "gelu_l2_norm", "softmax"])
def test_each_norm_matches_float64_reference(norm):
    layer = Pattention(24, 40, 48, norm=norm)
    x = torch.randn(3, 7, 24)
    expected = reference_theta(x.double() @ layer.key_tokens.double().T, norm, 48)
    expected = expected @ layer.value_tokens.double()
    assert_close_to_fp64(layer(x), expected)


@pytest.mark.parametrize("norm", ["l2_norm_gelu", "gelu_l2_norm", "softmax"])
def test_equals_official_formula(norm):
    layer = Pattention(16, 16, 64, norm=norm)
    x = torch.randn(3, 5, 16)
    expected = official_pattention(x, layer.key_tokens, layer.value_tokens, norm)
    torch.testing.assert_close(layer(x), expected)
    # an independent float64 check of the official formula itself
    scores = x.double() @ layer.key_tokens.double().T
    expected64 = reference_theta(scores, norm, 64) @ layer.value_tokens.double()
    assert_close_to_fp64(expected, expected64)


@pytest.mark.parametrize("norm", ["l2_norm_gelu", "gelu_l2_norm", "softmax"])
def test_all_zero_input_row_gives_finite_output(norm):
    layer = Pattention(8, 8, 16, norm=norm)
    x = torch.zeros(2, 8, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    if norm != "softmax":
        assert torch.equal(y, torch.zeros_like(y))


def test_any_leading_dims():
    layer = Pattention(8, 12, 16)
    x = torch.randn(2, 3, 4, 8)
    y = layer(x)
    assert y.shape == (2, 3, 4, 12)
    torch.testing.assert_close(y.reshape(-1, 12), layer(x.reshape(-1, 8)))


def test_tau_is_fixed_at_construction_and_saved():
    layer = Pattention(8, 8, 25)
    assert layer.tau.item() == pytest.approx(5.0)
    assert "tau" in layer.state_dict()
    other = Pattention(8, 8, 25)
    other.tau.fill_(3.0)
    layer.load_state_dict(other.state_dict())
    assert layer.tau.item() == pytest.approx(3.0)


def test_dropout_only_in_training():
    layer = Pattention(16, 16, 64, dropout=0.5)
    x = torch.randn(4, 16)
    plain = Pattention(16, 16, 64)
    plain.load_state_dict(layer.state_dict())
    layer.eval()
    torch.testing.assert_close(layer(x), plain(x))
    layer.train()
    assert not torch.allclose(layer(x), plain(x))


@pytest.mark.parametrize(
    ("key_init", "key_std"), [("fan_in", 256**-0.5), ("official", 0.02), (0.3, 0.3)]
)
def test_key_inits_and_the_official_value_init(key_init, key_std):
    layer = Pattention(256, 512, 2048, depth=4, key_init=key_init)
    # 2048 x 256 draws: the sample std is within ~1 % of the true one
    assert layer.key_tokens.std().item() == pytest.approx(key_std, rel=0.02)
    wang = 2.0 / (4 * math.sqrt(512))
    assert layer.value_tokens.std().item() == pytest.approx(wang, rel=0.02)


@pytest.mark.parametrize("key_init", ["xavier", 0.0, -1.0, True])
def test_a_bad_key_init_names_the_choices(key_init):
    with pytest.raises(ValueError, match=r"expected one of .*fan_in.*official.* or a positive std"):
        Pattention(8, 8, 8, key_init=key_init)


def test_official_growth_draws_new_keys_at_the_layer_s_own_init():
    from tokenformer_mm import grow_model

    layer = Pattention(256, 64, 512, key_init="official")
    grow_model(layer, factor=3, kinds=("proj",), init="official")
    assert layer.key_tokens[512:].std().item() == pytest.approx(0.02, rel=0.03)


def test_param_count_and_repr():
    layer = Pattention(10, 20, 30)
    assert sum(p.numel() for p in layer.parameters()) == 30 * (10 + 20)
    assert "num_tokens=30" in repr(layer) and "norm=l2_norm_gelu" in repr(layer)


def test_wrong_last_dim_names_both_sizes():
    layer = Pattention(8, 8, 16)
    with pytest.raises(ValueError, match=r"in_features=8.*\[2, 9\]"):
        layer(torch.randn(2, 9))


def test_unknown_norm_lists_allowed():
    with pytest.raises(ValueError, match=r"l2_norm_gelu.*gelu_l2_norm.*softmax"):
        Pattention(8, 8, 16, norm="relu")


@pytest.mark.parametrize("bad", [{"num_tokens": 0}, {"kind": "mlp"}, {"dropout": 1.0}])
def test_bad_constructor_arguments(bad):
    args = {"in_features": 8, "out_features": 8, "num_tokens": 16} | bad
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        Pattention(**args)
