import copy

import pytest
import torch
from torch import nn

from tokenformer_mm import GrowthReport, Pattention, grow_model, grow_optimizer_state, load_grown
from tokenformer_mm.growth import ramp_tau, seed_new_rows
from tokenformer_mm.growth.optimizer import NEW_ROWS

from .conftest import assert_equal_up_to_rounding, assert_same_function, block_stack

GELU_NORMS = ["l2_norm_gelu", "gelu_l2_norm"]


def token_count(model, kind):
    return {m.num_tokens for m in model.modules() if isinstance(m, Pattention) and m.kind == kind}


def regression_task(dim=32, n=64, seq=8):
    """A fixed, learnable target: a random non-linear map of the input tokens."""
    x = torch.randn(n, seq, dim)
    target = torch.tanh(x @ torch.randn(dim, dim) / dim**0.5)
    return x, target


@pytest.mark.parametrize("norm", GELU_NORMS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_exact_growth_preserves_output(norm, mode):
    small = block_stack(depth=3, norm=norm, causal=True, rotary_pct=0.25).train(mode == "train")
    grown = copy.deepcopy(small)
    report = grow_model(grown, factor=2)
    assert token_count(grown, "ffn") == {128} and token_count(grown, "qkv") == {32}
    assert len(report.layers) == 3 * 5 and report.init == "exact"
    x = torch.randn(4, 11, 32)  # inputs never seen before growth
    assert_same_function(grown(x), small(x))


@pytest.mark.parametrize("norm", GELU_NORMS)
def test_new_key_rows_receive_gradient(norm):
    model = block_stack(depth=2, norm=norm)
    grow_model(model, factor=2)
    model(torch.randn(2, 9, 32)).pow(2).mean().backward()
    for layer in (m for m in model.modules() if isinstance(m, Pattention)):
        old = layer.num_tokens // 2
        new_key_grad = layer.key_tokens.grad[old:]
        assert (new_key_grad.abs().sum(dim=1) > 0).all(), "a new key token got no gradient"


def test_training_after_growth_lowers_real_loss():
    x, target = regression_task()
    model = block_stack(depth=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def step():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(10):
        step()
    loss_before_growth = nn.functional.mse_loss(model(x), target).item()
    grow_model(model, factor=2, optimizer=optimizer)
    assert nn.functional.mse_loss(model(x), target).item() == pytest.approx(loss_before_growth)
    losses = [step() for _ in range(10)]
    assert losses[-1] < 0.9 * loss_before_growth


def test_official_growth_changes_output():
    """Official growth re-initialises τ = sqrt(2n) and draws random keys: the function moves."""
    model = block_stack(depth=2)
    x = torch.randn(2, 9, 32)
    before = model(x)
    report = grow_model(model, factor=2, init="official")
    assert (model(x) - before).abs().max().item() > 1e-3
    layer = model[0].ffn
    assert layer.tau.item() == pytest.approx(128**0.5)
    assert layer.key_tokens[64:].abs().sum() > 0 and report.init == "official"


def test_softmax_grows_approximately_with_warning():
    model = block_stack(depth=2, norm="softmax")
    x = torch.randn(2, 9, 32)
    before = model(x)
    with pytest.warns(UserWarning, match="exp\\(0\\)"):
        grow_model(model, factor=2)
    assert not torch.allclose(model(x), before)


def test_report_counts_layers_and_parameters():
    model = block_stack(depth=2)
    params = sum(p.numel() for p in model.parameters())
    report = grow_model(model, num_tokens={"ffn": 100, "qkv": 20}, kinds=("qkv", "ffn"))
    assert isinstance(report, GrowthReport)
    assert report.params_before == params
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.added_params == sum(layer.added_params for layer in report.layers)
    assert report.added_params == 2 * (3 * 4 * 64 + 36 * 64)
    assert {layer.kind for layer in report.layers} == {"qkv", "ffn"}
    assert len(report.layers) == 2 * 4
    assert token_count(model, "proj") == {16} and "qkv 16->20" in str(report)


def test_grow_only_selected_kinds():
    model = block_stack(depth=2)
    grow_model(model, factor=1.5, kinds=("ffn",))
    assert token_count(model, "ffn") == {96}
    assert token_count(model, "qkv") == {16} and token_count(model, "proj") == {16}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 0.5}, "cannot shrink"),
        ({"factor": 0}, "positive"),
        ({"factor": -2}, "positive"),
        ({"num_tokens": 8}, "cannot shrink"),
        ({}, "exactly one"),
        ({"factor": 2, "num_tokens": 32}, "exactly one"),
        ({"factor": 2, "kinds": ("mlp",)}, "subset"),
        ({"factor": 2, "init": "zeros"}, "exact"),
        ({"num_tokens": {"proj": 32}, "kinds": ("ffn",)}, "not being grown"),
        ({"factor": float("nan")}, "finite positive number, got nan"),
        ({"factor": float("inf")}, "finite positive number, got inf"),
        ({"factor": True}, "finite positive number, got True"),
        ({"num_tokens": True}, "positive ints, got True"),
        ({"factor": 2, "init": "perturbed", "perturbation": float("inf")}, "finite positive"),
        ({"factor": 2, "depth": True}, "depth must be an int >= 1"),
        ({"factor": 2, "seed": 1.5}, "seed must be an int or None, got 1.5"),
    ],
)
def test_bad_growth_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        grow_model(block_stack(depth=1), **kwargs)


def test_model_without_pattention_is_an_error():
    with pytest.raises(ValueError, match="no Pattention"):
        grow_model(nn.Linear(4, 4), factor=2)


@pytest.mark.parametrize("norm", GELU_NORMS)
def test_load_grown_reproduces_small_model(norm):
    small = block_stack(depth=2, norm=norm).eval()
    big = block_stack(depth=2, norm=norm, tokens=32).eval()
    report = load_grown(big, small.state_dict())
    x = torch.randn(3, 7, 32)
    assert_same_function(big(x), small(x))
    assert len(report.layers) == 2 * 5 and report.added_params > 0
    assert report.params_after == sum(p.numel() for p in big.parameters())


def test_load_grown_official_uses_large_tau_and_changes_output():
    small = block_stack(depth=2).eval()
    big = block_stack(depth=2, tokens=32).eval()
    load_grown(big, small.state_dict(), init="official")
    assert big[0].ffn.tau.item() == pytest.approx(128**0.5)
    torch.testing.assert_close(big[0].ffn.key_tokens[:64], small[0].ffn.key_tokens)
    x = torch.randn(3, 7, 32)
    assert not torch.allclose(big(x), small(x), atol=1e-3)


def test_load_grown_lists_every_mismatch_in_one_error():
    small = block_stack(depth=2)
    state = small.state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["0.q.tau"]
    bigger_than_model = block_stack(depth=2, tokens=8)  # the checkpoint has more tokens: shrinking
    with pytest.raises(ValueError) as info:
        load_grown(bigger_than_model, state)
    message = str(info.value)
    assert "missing from checkpoint: 0.q.tau" in message
    assert "unexpected in checkpoint: extra.weight" in message
    assert "0.q.key_tokens" in message and "1.ffn.value_tokens" in message


def test_load_grown_other_tensors_must_match():
    class Wrapped(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.blocks = block_stack(depth=1)
            self.head = nn.Linear(32, width)

    with pytest.raises(ValueError, match=r"head.weight: checkpoint \(10, 32\)"):
        load_grown(Wrapped(5), Wrapped(10).state_dict())


def adam_step(model, optimizer, x, target):
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), target).backward()
    optimizer.step()


def test_optimizer_state_grows_and_old_moments_continue():
    x, target = regression_task(n=16)
    model = block_stack(depth=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        adam_step(model, optimizer, x, target)
    twin = copy.deepcopy(model)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    # deepcopy: load_state_dict would otherwise share the "step" tensors between the optimizers
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))

    layer = model[0].ffn
    moments = {k: v.clone() for k, v in optimizer.state[layer.key_tokens].items()}
    report = grow_model(model, factor=2)
    assert grow_optimizer_state(optimizer, report) == 2 * 5 * 2 * 2  # layers x tensors x moments
    state = optimizer.state[layer.key_tokens]
    for key in ("exp_avg", "exp_avg_sq"):
        assert state[key].shape == layer.key_tokens.shape
        assert torch.equal(state[key][:64], moments[key]) and not state[key][64:].any()
    assert torch.equal(state["step"], moments["step"])

    # One more step: the old rows move exactly as in the twin that never grew.
    adam_step(model, optimizer, x, target)
    adam_step(twin, twin_optimizer, x, target)
    twin_state = twin_optimizer.state[twin[0].ffn.key_tokens]
    for key in ("exp_avg", "exp_avg_sq"):
        assert_equal_up_to_rounding(state[key][:64], twin_state[key])
    torch.testing.assert_close(layer.value_tokens[:64], twin[0].ffn.value_tokens)


def test_new_rows_first_update_is_no_larger_than_a_fresh_adamws():
    """Late in training (bias corrections ~1) zero moments would make a new row's first AdamW
    update (1 - β1) / sqrt(1 - β2) ≈ 3.2x a fresh AdamW's, which moves each entry by ~lr."""
    x, target = regression_task(n=16)
    model = block_stack(depth=2)
    lr = 1e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0)
    for _ in range(3):
        adam_step(model, optimizer, x, target)
    for state in optimizer.state.values():
        state["step"].fill_(10_000)  # as far into training as growth would be
    grow_model(model, factor=2, optimizer=optimizer)
    layers = [m for m in model.modules() if isinstance(m, Pattention)]
    before = [(m.key_tokens.detach().clone(), m.num_tokens // 2) for m in layers]
    adam_step(model, optimizer, x, target)
    pairs = list(zip(layers, before, strict=True))
    moved = torch.stack([(m.key_tokens[old:] - keys[old:]).abs().max() for m, (keys, old) in pairs])
    assert (moved > 0).all()  # the new keys train from the first step (gelu'(0) = 1/2)
    assert moved.max() <= lr * (1 + 1e-5)
    old_rows = [(m.key_tokens[:old] - keys[:old]).abs().max() for m, (keys, old) in pairs]
    assert max(old_rows) > 0.5 * lr  # the old rows keep their full AdamW steps
    # The seeding ran once: the next steps are plain AdamW steps (the hook stays, a no-op).
    assert not any(NEW_ROWS in state for state in optimizer.state.values())


def test_new_row_seeding_is_optimizer_state_that_a_checkpoint_carries():
    """Saved between growth and the next step, an optimizer resumes into the same update: the
    rows still to seed are in its ``state_dict``, and ``seed_new_rows`` applies them."""
    x, target = regression_task(n=16)
    model = block_stack(depth=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        adam_step(model, optimizer, x, target)
    grow_model(model, factor=2, optimizer=optimizer)
    saved = copy.deepcopy(optimizer.state_dict())
    assert {state[NEW_ROWS] for state in saved["state"].values() if NEW_ROWS in state} == {64, 16}
    twin = copy.deepcopy(model)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    twin_optimizer.load_state_dict(saved)  # no hook: what a resumed run has
    adam_step(model, optimizer, x, target)
    twin_optimizer.zero_grad()
    nn.functional.mse_loss(twin(x), target).backward()
    assert seed_new_rows(twin_optimizer) == 0
    twin_optimizer.step()
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert not any(NEW_ROWS in state for state in twin_optimizer.state.values())


@pytest.mark.parametrize("pass_optimizer", [True, False])
def test_growth_inside_a_loop_that_still_holds_the_last_loss(pass_optimizer):
    """nanoGPT-style: train, keep ``loss``, grow, go on (same or new optimizer) — both towers."""
    import timm

    from tokenformer_mm.language import TokenformerLM, lm_config

    tokens = torch.randint(0, 320, (2, 17))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    cases = [
        (TokenformerLM(lm_config("tiny")), lambda m: m(tokens[:, :-1], tokens[:, 1:])[1]),
        (
            timm.create_model("tokenformer_micro_patch4_32", num_classes=4),
            lambda m: nn.functional.cross_entropy(m(images), labels),
        ),
    ]
    for model, compute_loss in cases:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            loss = compute_loss(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            before = compute_loss(model)
        grow_model(model, factor=2, optimizer=optimizer if pass_optimizer else None)
        if not pass_optimizer:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):  # `loss` (the graph of the small model) is still alive here
            grown_loss = compute_loss(model)
            optimizer.zero_grad()
            grown_loss.backward()
            optimizer.step()
        assert loss.grad_fn is not None
        ffn = next(m for m in model.modules() if isinstance(m, Pattention) and m.kind == "ffn")
        assert ffn.key_tokens[ffn.num_tokens // 2 :].abs().max() > 0  # the new tokens train
        with torch.no_grad():
            after = compute_loss(model)
        assert torch.isfinite(after)
        if pass_optimizer:  # the optimizer's state carried over: training simply goes on
            assert after < before


def test_an_optimizer_told_later_follows_the_grown_parameters():
    """Grown layers get new Parameters; ``grow_optimizer_state`` moves an optimizer onto them,
    also after two growths, and the untouched parameters keep their identity."""
    model = block_stack(depth=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, target = regression_task(n=4)
    adam_step(model, optimizer, x, target)
    norms_and_others = [p for n, p in model.named_parameters() if "ffn" not in n]
    first = grow_model(model, factor=2, kinds=["ffn"])
    second = grow_model(model, factor=2, kinds=["ffn"])
    # ffn keys and values x two moments
    assert grow_optimizer_state(optimizer, first, second) == 2 * 2
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [
        id(p) for p in model.parameters()
    ]
    assert [p for n, p in model.named_parameters() if "ffn" not in n] == norms_and_others
    assert optimizer.state[model[0].ffn.key_tokens]["exp_avg"].shape == (256, 32)
    adam_step(model, optimizer, x, target)  # trains on, the grown layer included
    assert model[0].ffn.key_tokens[64:].abs().max() > 0


def test_training_flops_count_pattention_and_attention():
    """One block, forward + backward: 3x the forward FLOPs of its Pattentions and attention."""
    from tokenformer_mm.flops import pattention_flops_per_token, training_flops

    x = torch.randn(2, 10, 32, requires_grad=True)
    model = block_stack(depth=1)
    flops = training_flops(model, lambda: model(x).sum())
    tokens = 2 * 10
    assert flops == 3 * (tokens * pattention_flops_per_token(model) + 2 * 4 * 10 * 10 * 32)
    assert pattention_flops_per_token(model) == 2 * (3 * 16 * 64 + 16 * 64 + 64 * 64)


def test_attention_flops_follow_one_convention_whatever_the_kernel():
    """A fused SDPA kernel counts what the explicit matmuls count: 4·T·S·d forward, 2x backward."""
    from tokenformer_mm.flops import training_flops

    q, k, v = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))

    def explicit():
        weights = (q @ k.transpose(-2, -1) / 8**0.5).softmax(-1)
        return (weights @ v).sum()

    def fused():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()

    module = torch.nn.Module()
    assert (
        training_flops(module, fused)
        == training_flops(module, explicit)
        == 3 * 4 * 2 * 3 * 7 * 7 * 8
    )


def _towers():
    """(model, loss) for both towers and the CLIP text tower, at their smallest sizes."""
    import open_clip
    import timm

    import tokenformer_mm.clip  # noqa: F401  (registers the CLIP configs)
    from tokenformer_mm.language import TokenformerLM, lm_config

    tokens = torch.randint(0, 320, (2, 17))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    text = open_clip.create_model("TokenformerCLIP-micro").text
    captions = torch.randint(1, 1000, (2, 20))
    return [
        (TokenformerLM(lm_config("tiny")), lambda m: m(tokens[:, :-1], tokens[:, 1:])[1]),
        (
            timm.create_model("tokenformer_micro_patch4_32", num_classes=4),
            lambda m: nn.functional.cross_entropy(m(images), labels),
        ),
        (text, lambda m: m(captions).square().mean()),
    ]


def test_exact_depth_growth_keeps_the_loss_and_trains_in_every_tower():
    from tokenformer_mm import grow_depth

    for model, compute_loss in _towers():
        depth = len(_block_list(model))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with torch.no_grad():
            before = compute_loss(model)
        report = grow_depth(model, factor=2, optimizer=optimizer)
        assert len(_block_list(model)) == 2 * depth and report.depth == (depth, 2 * depth)
        assert str(report).startswith(f"grew depth {depth} -> {2 * depth} with init=exact")
        with torch.no_grad():
            after = compute_loss(model)
        # New blocks add exact zeros to the residual stream: the same function, bit for bit.
        assert abs(after.item() - before.item()) <= 1e-6 * abs(before.item())
        new_block = _block_list(model)[1]
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
            list(model.parameters())
        )
        for _ in range(3):
            optimizer.zero_grad()
            compute_loss(model).backward()
            optimizer.step()
        assert new_block.proj.value_tokens.abs().max() > 0  # the identity block trains
        assert new_block.ffn.value_tokens.abs().max() > 0
    lm = _towers()[0][0]
    grow_depth(lm, factor=3)
    assert lm.config.depth == 6  # save_pretrained writes the grown depth
    vit = _towers()[1][0]
    grow_depth(vit, factor=2)
    assert [info["module"] for info in vit.feature_info] == [f"blocks.{i}" for i in range(8)]
    assert len(vit.forward_intermediates(torch.randn(1, 3, 32, 32), indices=8)[1]) == 8


def test_stacked_depth_growth_copies_blocks_and_bad_arguments_say_what_is_allowed():
    from tokenformer_mm import grow_depth

    model, compute_loss = _towers()[0]
    with torch.no_grad():
        before = compute_loss(model)
    grow_depth(model, factor=2, init="stack")
    blocks = _block_list(model)
    assert torch.equal(blocks[0].ffn.key_tokens, blocks[1].ffn.key_tokens)
    assert blocks[0].ffn.key_tokens is not blocks[1].ffn.key_tokens
    with torch.no_grad():
        assert compute_loss(model) != before  # stacking is not exact
    with pytest.raises(ValueError, match="factor must be an int >= 2, got 1"):
        grow_depth(model, factor=1)
    with pytest.raises(ValueError, match=r"expected one of \('exact', 'stack'\)"):
        grow_depth(model, init="zero")
    import open_clip

    clip = open_clip.create_model("TokenformerCLIP-micro")
    with pytest.raises(ValueError, match=r"found 2 .*grow a tower"):
        grow_depth(clip)


def test_one_call_grows_width_and_depth_exactly_and_a_deeper_checkpoint_loads():
    from tokenformer_mm.growth import load_resized

    model, compute_loss = _towers()[0]
    fresh = copy.deepcopy(model)  # the initial size, as a resumed run builds it
    with torch.no_grad():
        before = compute_loss(model)
    report = grow_model(model, factor=2, depth=2)
    assert report.depth == (2, 4) and {layer.new_tokens for layer in report.layers} >= {32}
    assert str(report).startswith("grew depth 2 -> 4 and ") and "Pattention layers" in str(report)
    assert report.params_before == _count(fresh) and report.params_after == _count(model)
    with torch.no_grad():
        assert abs(compute_loss(model).item() - before.item()) <= 1e-6 * abs(before.item())
    load_resized(fresh, model.state_dict())  # deepens, widens, then loads strictly
    with torch.no_grad():
        assert compute_loss(fresh).item() == compute_loss(model).item()
    odd = {k.replace("blocks.3.", "blocks.2."): v for k, v in model.state_dict().items()}
    odd = {k: v for k, v in odd.items() if ".3." not in k}
    with pytest.raises(ValueError, match=r"checkpoint has 3 blocks under 'blocks', the model 2"):
        load_resized(copy.deepcopy(_towers()[0][0]), odd)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _block_list(model):
    from tokenformer_mm.growth import block_container

    return block_container(model)[1]


@pytest.mark.parametrize("norm", GELU_NORMS)
def test_perturbed_growth_breaks_symmetry_and_moves_the_output_by_its_scale(norm):
    small = block_stack(depth=2, norm=norm).eval()
    x = torch.randn(4, 9, 32)
    changes = {}
    for perturbation in (1e-3, 1e-1):
        grown = copy.deepcopy(small)
        grow_model(grown, factor=2, init="perturbed", perturbation=perturbation)
        layer = grown[0].ffn
        new_keys = layer.key_tokens[64:]
        assert new_keys.std().item() == pytest.approx(perturbation * layer.key_init_std, rel=0.1)
        assert layer.tau.item() == pytest.approx(64**0.5)  # τ kept, as in exact growth
        changes[perturbation] = ((grown(x) - small(x)).abs().max() / small(x).abs().max()).item()
    # O(perturbation): small, well above float rounding, and growing with the scale.
    assert 1e-6 < changes[1e-3] < 1e-2 and changes[1e-1] > 10 * changes[1e-3]
    bigger = block_stack(depth=2, tokens=32, norm=norm)
    load_grown(bigger, small.state_dict(), init="perturbed", perturbation=1e-3)
    assert 0 < bigger[0].ffn.key_tokens[64:].abs().max() < 1e-2
    with pytest.raises(ValueError, match="needs a finite positive perturbation, got 0"):
        grow_model(copy.deepcopy(small), factor=2, init="perturbed", perturbation=0)


def test_a_layer_in_two_tau_ramps_follows_the_newest_that_has_begun():
    """Progressive growth: a second ramp starting inside the first owns its layers from its
    grow step on, and the first, still under way, does not pull them back."""
    model = torch.nn.Sequential(Pattention(8, 8, num_tokens=64))
    first = {"step": 10, "tau_ramp": {"steps": 100, "layers": {"0": [8.0, 16.0]}}}
    second = {"step": 20, "tau_ramp": {"steps": 5, "layers": {"0": [9.0, 32.0]}}}
    for step, expected in ((15, 8.0 * 2 ** (5 / 100)), (20, 9.0), (25, 32.0), (60, 32.0)):
        ramp_tau([first, second], step, model)
        assert model[0].tau.item() == pytest.approx(expected, rel=1e-6), step


def test_a_refused_growth_leaves_the_model_and_its_optimizer_as_they_were():
    model = block_stack(depth=2)
    optimizer = torch.optim.AdamW(model.parameters())
    before = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_model(model, num_tokens=8, depth=2, optimizer=optimizer)  # width checked first
    assert [p.shape for p in model.parameters()] == before
    assert len(optimizer.param_groups[0]["params"]) == len(before)


def test_growing_twice_between_steps_and_another_step_hook_keep_the_optimizer_working():
    """The new-row seeding is one step pre-hook per optimizer that never removes itself while
    torch loops over the hooks (that broke the step as soon as there were two)."""
    x, target = regression_task(n=16)
    model = block_stack(depth=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    adam_step(model, optimizer, x, target)
    grow_model(model, factor=2, optimizer=optimizer)
    grow_model(model, factor=2, optimizer=optimizer)
    optimizer.register_step_pre_hook(lambda *args: None)
    for _ in range(2):
        adam_step(model, optimizer, x, target)
    assert all(NEW_ROWS not in state for state in optimizer.state.values())


def test_reports_given_out_of_order_are_refused():
    model = block_stack(depth=1)
    optimizer = torch.optim.AdamW(model.parameters())
    first, second = grow_model(model, factor=2), grow_model(model, factor=2)
    with pytest.raises(ValueError, match="out of order"):
        grow_optimizer_state(optimizer, second, first)
    grow_optimizer_state(optimizer, first, second)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {
        id(p) for p in model.parameters()
    }


@pytest.mark.parametrize("parametrization", ["standard", "mup"])
def test_growing_a_model_with_adapters_is_refused_before_it_changes(parametrization):
    import timm

    from tokenformer_mm.adapters import AdapterConfig, add_adapter

    model = timm.create_model("tokenformer_micro_patch4_32", parametrization=parametrization)
    add_adapter(model, "a", AdapterConfig(num_tokens=4, kinds=("ffn",)))
    before = {k: v.shape for k, v in model.state_dict().items()}
    for grow in (lambda: grow_model(model, factor=2), lambda: grow_model(model, depth=2)):
        with pytest.raises(ValueError, match=r"carries token adapters \['a'\]: merge_adapter"):
            grow()
    assert {k: v.shape for k, v in model.state_dict().items()} == before


def test_a_mup_image_model_grown_in_depth_and_width_loads_through_timm(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "parametrization": "mup"}
    model = timm.create_model("tokenformer_micro_patch4_32", **kwargs).eval()
    grow_model(model, factor=2, depth=2, init="perturbed")
    save_file(model.state_dict(), str(tmp_path / "grown.safetensors"))
    loaded = timm.create_model(
        "tokenformer_micro_patch4_32", pretrained=True, **kwargs,
        pretrained_cfg_overlay={"file": str(tmp_path / "grown.safetensors"), "num_classes": 10},
    ).eval()  # fmt: skip
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
