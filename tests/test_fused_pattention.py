"""The fused Pattention path against the plain (reference) path: values, gradients, memory."""

import pytest
import torch

from tokenformer_mm import Pattention, TokenformerBlock, grow_model
from tokenformer_mm.pattention import (
    FUSED_MIN_SCORES,
    NORMS,
    fused_pattention_enabled,
    pattention_group,
    set_fused_pattention,
)

from .conftest import assert_equal_up_to_rounding
from .reference import official_pattention, saved_activation_bytes


def outputs_and_grads(layers, x, fused, dy):
    """Run ``layers`` on ``x`` on one path; return the outputs and every gradient."""
    for layer in layers:
        layer.fused = fused
        layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    ys = pattention_group(layers, x) if len(layers) > 1 else [layers[0](x)]
    torch.autograd.backward(ys, dy)
    grads = [x.grad] + [p.grad for layer in layers for p in (layer.key_tokens, layer.value_tokens)]
    return ys, grads


def assert_paths_agree(layers, x, dtype):
    dy = [torch.randn(*x.shape[:-1], layer.out_features, dtype=dtype) for layer in layers]
    fused_out, fused_grads = outputs_and_grads(layers, x, True, dy)
    plain_out, plain_grads = outputs_and_grads(layers, x, False, dy)
    for fused, plain in zip(fused_out + fused_grads, plain_out + plain_grads, strict=True):
        assert fused.dtype == plain.dtype == dtype
        scale = plain.abs().max().item()
        if dtype == torch.float64:
            torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10 * max(scale, 1))
        elif dtype == torch.float32:
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5 * max(scale, 1))
        else:  # bf16: both paths round differently; compare in fp32 against the tensor's scale
            error = (fused.float() - plain.float()).abs().max().item()
            assert error <= 0.03 * scale, (error, scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
def test_fused_matches_plain_values_and_grads(norm, dtype):
    torch.manual_seed(0)
    layer = Pattention(13, 7, 11, norm=norm, dtype=dtype)  # odd sizes everywhere
    with torch.no_grad():  # larger values than the init, so the norms have work to do
        layer.key_tokens.normal_(0, 1.0)
        layer.value_tokens.normal_(0, 0.5)
    assert_paths_agree([layer], torch.randn(3, 5, 13, dtype=dtype), dtype)
    assert_paths_agree([layer], torch.randn(9, 13, dtype=dtype), dtype)  # 2-D input


@pytest.mark.parametrize("norm", NORMS)
def test_group_of_three_matches_separate_plain_layers(norm):
    torch.manual_seed(1)
    layers = [Pattention(12, out, 10, norm=norm) for out in (12, 12, 6)]
    if norm != "softmax":  # grown: 20 tokens each, tau still sqrt(10)
        grow_model(torch.nn.ModuleList(layers), 2.0)
    with torch.no_grad():
        for layer in layers:
            layer.key_tokens.normal_(0, 1.0)
    assert_paths_agree(layers, torch.randn(2, 7, 12), torch.float32)


def test_zero_rows_clamp_like_the_plain_path():
    for norm in NORMS:
        layer = Pattention(6, 6, 8, norm=norm)
        x = torch.randn(4, 6)
        x[1] = 0  # the score norm is clamped to eps on this row
        assert_paths_agree([layer], x, torch.float32)


@pytest.mark.parametrize("norm", NORMS)
def test_fused_path_saves_at_most_half_of_the_official_formula(norm):
    layer = Pattention(64, 64, 64, norm=norm)
    params = list(layer.parameters())
    x = torch.randn(4, 32, 64)

    x = x.requires_grad_()

    def bytes_on(path):
        layer.fused = path == "fused"
        return saved_activation_bytes(lambda: layer(x), exclude=params)

    fused, plain = bytes_on("fused"), bytes_on("plain")
    official = saved_activation_bytes(
        lambda: official_pattention(x, layer.key_tokens, layer.value_tokens, norm), exclude=params
    )
    row = 4 * 32 * 64 * 4  # one [tokens, 64] fp32 tensor, e.g. x
    assert fused <= 2 * row + 4 * 32 * 4 + 64  # x, one [tokens, n] tensor, a norm per row
    assert fused < plain
    if norm == "softmax":  # its backward needs x and the weights, like the official one...
        assert fused - row <= 0.5 * (official - row)  # ...but half of everything else
    else:
        assert fused <= 0.5 * official


def test_block_groups_qkv_and_keeps_hooks_working():
    torch.manual_seed(0)
    block = TokenformerBlock(16, 2, 8, 8, 32)
    x = torch.randn(2, 5, 16)
    expected = block(x)
    seen = []
    handle = block.k.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    torch.testing.assert_close(block(x), expected)  # hooked: q, k, v run one by one
    assert seen == [torch.Size([2, 5, 16])]
    handle.remove()
    for layer in (block.q, block.k, block.v, block.proj, block.ffn):
        layer.fused = False
    assert_equal_up_to_rounding(block(x), expected)


def test_plain_path_is_chosen_for_dropout_and_by_the_flags():
    layer = Pattention(8, 8, 8, dropout=0.1)
    assert not layer.train().uses_fused_path()  # the backward could not replay the mask
    assert layer.eval().uses_fused_path()
    assert Pattention(8, 8, 8).uses_fused_path()
    assert not Pattention(8, 8, 8, fused=False).uses_fused_path()
    # by default, by size: tiny inputs (e.g. one token per generation step) take the plain path
    small, large = torch.randn(2, 8), torch.randn(FUSED_MIN_SCORES // 8, 8)
    assert not Pattention(8, 8, 8).uses_fused_path(small)
    assert Pattention(8, 8, 8).uses_fused_path(large)
    assert Pattention(8, 8, 8, fused=True).uses_fused_path(small)
    assert fused_pattention_enabled()
    set_fused_pattention(False)
    try:
        assert not Pattention(8, 8, 8).uses_fused_path()
    finally:
        set_fused_pattention(True)


@pytest.mark.parametrize("norm", NORMS)
def test_fused_path_under_cpu_autocast_matches_plain(norm):
    torch.manual_seed(0)
    layer = Pattention(16, 16, 24, norm=norm)
    x = torch.randn(3, 16)
    results = []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x).float()
        out.square().sum().backward()
        results.append([out, layer.key_tokens.grad, layer.value_tokens.grad])
    for fused, plain in zip(*results, strict=True):
        assert fused.dtype == plain.dtype == torch.float32  # grads land on the fp32 params
        error = (fused - plain).abs().max().item()
        assert error <= 0.03 * plain.abs().max().item(), error
    # One theta (theta.py), one dtype policy: the forward values are the same bf16 numbers up to
    # one bf16 rounding (2^-7 of the output's scale; softmax's tau² is rounded on the bf16 values).
    (fused_out, _, _), (plain_out, _, _) = results
    scale = plain_out.abs().max().item()
    torch.testing.assert_close(fused_out, plain_out, rtol=0, atol=2**-7 * scale)


def test_torch_compile_traces_forward_and_backward():
    torch.manual_seed(0)
    block = TokenformerBlock(16, 2, 8, 8, 32)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 5, 16, requires_grad=True)
    compiled(x).square().sum().backward()
    grads = [x.grad] + [p.grad for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    block(x).square().sum().backward()
    eager_grads = [x.grad] + [p.grad for p in block.parameters()]
    for compiled_grad, eager_grad in zip(grads, eager_grads, strict=True):
        assert_equal_up_to_rounding(compiled_grad, eager_grad)


def test_double_backward_needs_the_plain_path():
    layer = Pattention(6, 6, 8)
    x = torch.randn(3, 6, requires_grad=True)
    for fused in (True, False):
        layer.fused = fused
        (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        if fused:  # the fused backward is not itself differentiable, and says so
            with pytest.raises(RuntimeError, match="once_differentiable"):
                grad.sum().backward()
        else:  # e.g. a gradient penalty
            grad.sum().backward()
            assert torch.isfinite(x.grad).all()


def test_group_falls_back_for_backward_hooks_global_hooks_subclasses_and_wrappers():
    torch.manual_seed(0)
    block = TokenformerBlock(8, 2, 8, 8, 16)
    x = torch.randn(2, 3, 8, requires_grad=True)
    expected = block(x)
    calls = []
    handle = block.q.register_full_backward_hook(lambda *args: calls.append("q backward"))
    block(x).sum().backward()
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(type(module).__name__)
    )
    block(x)
    handle.remove()
    assert calls.count("q backward") == 1 and calls.count("Pattention") == 5

    class Doubled(Pattention):
        def forward(self, x):
            return 2 * super().forward(x)

    class Wrapper(torch.nn.Module):  # e.g. an adapter around a projection
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    doubled = Doubled(8, 8, 8)
    doubled.load_state_dict(block.k.state_dict())
    original_k, block.k = block.k, doubled
    assert not torch.allclose(block(x), expected)  # the override runs
    block.k = Wrapper(original_k)
    torch.testing.assert_close(block(x), expected)  # the wrapper runs (no attribute error)


def test_torch_func_transforms_take_the_plain_path():
    torch.manual_seed(0)
    layer = Pattention(6, 4, 8)
    x = torch.randn(5, 6)
    params = dict(layer.named_parameters())

    def loss(params, x):
        return torch.func.functional_call(layer, params, (x,)).square().sum()

    grads = torch.func.grad(loss)(params, x)
    loss(params, x).backward()  # the fused path, through autograd
    for name, p in layer.named_parameters():  # two paths: equal to fp32 rounding
        assert_equal_up_to_rounding(grads[name], p.grad)
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x[:, None])
    assert per_sample["key_tokens"].shape == (5, 8, 6)


def test_only_the_values_train():
    torch.manual_seed(0)
    layer = Pattention(6, 4, 8)
    layer.key_tokens.requires_grad_(False)
    x = torch.randn(3, 6)
    grads = []
    for fused in (True, False):
        layer.fused = fused
        layer.value_tokens.grad = None
        layer(x).square().sum().backward()
        grads.append(layer.value_tokens.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert layer.key_tokens.grad is None
