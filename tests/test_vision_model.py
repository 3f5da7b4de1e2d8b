import pytest
import safetensors.torch
import timm
import torch
from timm.optim import create_optimizer_v2

import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models with timm)
from tokenformer_mm import grow_model
from tokenformer_mm.vision import TokenformerViT

from .conftest import assert_same_function

ALL_NAMES = [
    "tokenformer_base_patch16_224",
    "tokenformer_base_patch16_384",
    "tokenformer_base_patch32_224",
    "tokenformer_base_vitparams_patch16_224",
    "tokenformer_large_patch16_224",
    "tokenformer_large_patch16_384",
    "tokenformer_micro_patch4_32",
    "tokenformer_small_patch16_224",
    "tokenformer_tiny_patch16_224",
]


def tiny(**kwargs) -> TokenformerViT:
    return timm.create_model("tokenformer_tiny_patch16_224", **{"img_size": 64, **kwargs}).eval()


def test_every_variant_is_registered():
    assert timm.list_models("tokenformer_*") == ALL_NAMES


# The 224/384 variants take seconds each on CPU: the fast tier builds the micro ones only.
VARIANTS = [
    pytest.param(name, marks=pytest.mark.slow) if "micro" not in name else name
    for name in ALL_NAMES
]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_builds_runs_and_trains(name):
    model = timm.create_model(name, img_size=64, num_classes=7)
    assert isinstance(model, TokenformerViT) and model.pretrained_cfg["architecture"] == name
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reference_sizes_match_the_paper_table():
    base = timm.create_model("tokenformer_base_patch16_224")
    vit_matched = timm.create_model("tokenformer_base_vitparams_patch16_224")
    vit = timm.create_model("vit_base_patch16_224")
    assert base.blocks[0].q.num_tokens == 768 and base.blocks[0].ffn.num_tokens == 3072
    assert (
        vit_matched.blocks[0].q.num_tokens == 576 and vit_matched.blocks[0].ffn.num_tokens == 2304
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(vit_matched) - count(vit)) / count(vit) < 0.01


def test_pretrained_cfg_carries_data_config():
    cfg = timm.data.resolve_data_config({}, model=tiny())
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["crop_pct"] == 0.875
    assert tiny().pretrained_cfg["first_conv"] == "patch_embed.proj"
    assert tiny().pretrained_cfg["classifier"] == "head"


def test_features_only_returns_feature_info_maps():
    model = timm.create_model("tokenformer_tiny_patch16_224", img_size=64, features_only=True)
    maps = model(torch.randn(2, 3, 64, 64))
    assert len(maps) == len(model.feature_info.channels()) == 3
    for fmap, chs, red in zip(
        maps, model.feature_info.channels(), model.feature_info.reduction(), strict=True
    ):
        assert fmap.shape == (2, chs, 64 // red, 64 // red)


def test_forward_intermediates_nchw_nlc_and_final_features():
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    final, maps = model.forward_intermediates(x, indices=[2, 5])
    torch.testing.assert_close(final, model.forward_features(x))
    assert [m.shape for m in maps] == [(2, 192, 4, 4)] * 2
    last_two = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
    assert [t.shape for t in last_two] == [(2, 16, 192)] * 2
    # an NCHW map is the block's patch tokens laid out on the patch grid
    tokens = model.forward_intermediates(x, indices=[2], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(tokens[0].transpose(1, 2).reshape(2, 192, 4, 4), maps[0])
    pairs = model.forward_intermediates(
        x, indices=1, return_prefix_tokens=True, intermediates_only=True
    )
    assert pairs[0][1].shape == (2, 1, 192)
    early = model.forward_intermediates(x, indices=[3], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], model.forward_intermediates(x, indices=[3])[1][0])


def test_prune_intermediate_layers():
    model = tiny()
    x = torch.randn(1, 3, 64, 64)
    expected = model.forward_intermediates(x, indices=[4], intermediates_only=True)[0]
    assert model.prune_intermediate_layers([4]) == [4]
    assert len(model.blocks) == 5 and model.num_classes == 0
    torch.testing.assert_close(model.forward_intermediates(x, indices=[4])[1][0], expected)


def test_num_classes_zero_and_global_pool_as_timm_documents():
    x = torch.randn(2, 3, 64, 64)
    model = tiny(num_classes=0)
    features = model.forward_features(x)
    torch.testing.assert_close(model(x), features[:, 0])  # pooled class token, no head
    model.reset_classifier(0, global_pool="avg")
    torch.testing.assert_close(model(x), features[:, 1:].mean(1))
    unpooled = tiny(num_classes=0, global_pool="")
    assert unpooled(x).shape == (2, 17, 192)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    with pytest.raises(ValueError, match="global_pool"):
        tiny(global_pool="max")


def test_safetensors_round_trip_through_pretrained_overlay(tmp_path):
    source = tiny()
    path = tmp_path / "tiny.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    loaded = timm.create_model(
        "tokenformer_tiny_patch16_224",
        img_size=64,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
    ).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), source(x))
    via_checkpoint_path = tiny(checkpoint_path=str(path))
    assert torch.equal(via_checkpoint_path(x), source(x))


def test_checkpoint_at_224_loads_into_model_at_160(tmp_path):
    source = timm.create_model("tokenformer_tiny_patch16_224")
    path = tmp_path / "tiny224.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    model = timm.create_model(
        "tokenformer_tiny_patch16_224",
        img_size=160,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    assert model.pos_embed.shape == (1, 1 + 10 * 10, 192)
    expected = timm.layers.resample_abs_pos_embed(source.pos_embed, new_size=[10, 10])
    torch.testing.assert_close(model.pos_embed, expected)
    assert torch.equal(model.blocks[3].ffn.key_tokens, source.blocks[3].ffn.key_tokens)
    assert model(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


def test_filter_unwraps_and_drops_a_head_of_other_size(tmp_path):
    source = tiny(num_classes=1000)
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"model": wrapped}, path)
    model = tiny(num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.pos_embed, source.pos_embed)
    assert torch.equal(model.blocks[0].q.value_tokens, source.blocks[0].q.value_tokens)
    assert model.head.out_features == 10


def test_grow_model_is_exact_on_the_vision_tower():
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    params = sum(p.numel() for p in model.parameters())
    report = grow_model(model, factor=2)
    assert_same_function(model(x), before)
    assert report.params_before == params
    assert report.added_params == 12 * (4 * 192 * 384 + 768 * 384)
    assert sum(p.numel() for p in model.parameters()) == params + report.added_params


def timm_fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """The fx feature extractor timm's own model tests build (its leaf modules and functions)."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(),
        autowrap_functions=get_notrace_functions(),
        param_shapes_constant=True,
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("size", [32, 64])  # 32: the small layers take the plain path eagerly
def test_torchscript_fx_and_fx_torchscript_as_timm_tests_them(size):
    """timm's test_model_forward_torchscript / _fx / _fx_torchscript, on our family's shape."""
    model = tiny(img_size=size).eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected)
        fx_model = timm_fx_model(model)
        (fx_out,) = fx_model(x).values()
        assert torch.equal(fx_out, expected)  # timm asserts equality, not closeness
        (scripted_out,) = torch.jit.script(fx_model)(x).values()
        torch.testing.assert_close(scripted_out, expected)


def test_dynamic_img_size_and_set_input_size():
    model = tiny(dynamic_img_size=True)
    for size in (48, 80):
        assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)
    fixed = tiny()
    fixed.set_input_size(img_size=96)
    assert fixed.pos_embed.shape == (1, 1 + 36, 192)
    assert fixed(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_timm_optimizer_factory_uses_no_weight_decay_and_group_matcher():
    model = tiny()
    optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    no_decay = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]
    }
    assert id(model.pos_embed) in no_decay and id(model.cls_token) in no_decay
    layered = create_optimizer_v2(model, "adamw", weight_decay=0.05, layer_decay=0.75)
    assert len({g["lr_scale"] for g in layered.param_groups}) == 12 + 2


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for grad, p in zip(expected, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, grad)


@pytest.mark.parametrize("depth", [1, 2])
def test_a_grown_checkpoint_loads_through_timm_by_file(tmp_path, depth):
    """timm's own loading path (pretrained + file overlay) rebuilds a grown model exactly, also
    one that grew in depth (the engine's resume and timm's filter follow one rule)."""
    model = timm.create_model("tokenformer_micro_patch4_32").eval()
    grow_model(model, factor=2, depth=depth)
    with torch.no_grad():
        model.blocks[0].ffn.key_tokens[-1].normal_()  # the grown tokens carry trained weights
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = timm.create_model(
        "tokenformer_micro_patch4_32", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    assert loaded.blocks[0].ffn.num_tokens == model.blocks[0].ffn.num_tokens == 768
    assert len(loaded.blocks) == len(model.blocks) == 4 * depth
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_checkpoint_with_or_without_layer_scale_loads_only_into_its_own_kind(tmp_path):
    """A checkpoint saved without LayerScale (the paper's block, or this library before it was
    the default) is refused by the default model with the fix named, and loads as it was saved
    into a model created with ``init_values=0``; and the other way round."""
    x = torch.randn(2, 3, 64, 64)
    for saved, other, fix in [(0, 0.1, "init_values=0 "), (0.1, 0, "init_values=0.1")]:
        source = tiny(init_values=saved)
        path = tmp_path / f"{saved}.safetensors"
        safetensors.torch.save_file(source.state_dict(), path)
        overlay = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        with pytest.raises(ValueError, match=fix):
            tiny(init_values=other, **overlay)
        assert torch.equal(tiny(init_values=saved, **overlay)(x), source(x))
        with pytest.raises(RuntimeError, match=r"ls1\.gamma"):  # timm's own strict loader
            tiny(init_values=other, checkpoint_path=str(path))
