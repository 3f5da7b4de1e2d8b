"""Token adapters under bad inputs and faults: refused with the value and the fix, the model left
as it was; and the paths where an adapter could silently compute something else."""

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models)
from tokenformer_mm import Pattention
from tokenformer_mm.adapters import (
    AdapterConfig,
    TokenAdapter,
    add_adapter,
    load_adapter,
    merge_adapter,
    remove_adapter,
    save_adapter,
    set_adapter,
    using_adapter,
)
from tokenformer_mm.language.model import TokenformerLM, lm_config

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("tokenformer_micro_patch4_32", num_classes=10, **kwargs).eval()


def keys_of(model):
    return list(model.state_dict())


@pytest.mark.parametrize("parametrization", ["standard", "mup"])
def test_merging_one_adapter_keeps_the_others_function(parametrization):
    """Merge a then b, or b then a: the same model (under μP the layer's value multiplier moves
    with its token count, and the adapters not merged must move with it)."""
    models = []
    for order in (("a", "b"), ("b", "a")):
        model = vit(parametrization=parametrization)
        add_adapter(model, "a", AdapterConfig(num_tokens=4, kinds=("ffn",), init="perturbed"))
        add_adapter(model, "b", AdapterConfig(num_tokens=12, kinds=("ffn",), init="perturbed"))
        with torch.no_grad():  # values apart from the base's, so a wrong scale shows
            for name, param in model.named_parameters():
                if ".adapter_" in name:
                    param.normal_(std=1.0)
        for name in order:
            merge_adapter(model, name)
        models.append(model)
    with torch.no_grad():
        first, second = (model(IMAGES) for model in models)
    assert torch.allclose(first, second, rtol=0, atol=1e-5 * first.abs().max())


@pytest.mark.parametrize("norm", ["l2_norm_gelu", "gelu_l2_norm"])
@pytest.mark.parametrize("init", ["exact", "perturbed"])
def test_an_all_zero_input_row_gets_finite_gradients_as_in_the_base_layer(norm, init):
    torch.manual_seed(0)
    layer = TokenAdapter(Pattention(8, 6, 16, norm=norm, fused=False))
    layer.add("a", AdapterConfig(num_tokens=4, init=init))
    layer.active = "a"
    x = torch.randn(3, 8)
    x[1] = 0  # padding, or a constant row after a bias-free norm
    x.requires_grad_()
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.adapter_keys["a"].grad).all()
    assert torch.isfinite(layer.adapter_values["a"].grad).all()


def test_zero_key_adapters_are_exact_under_autocast():
    model = vit()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(IMAGES)
        add_adapter(model, "a", AdapterConfig(num_tokens=4))
        assert torch.equal(model(IMAGES), before)


def test_a_name_that_is_no_adapter_is_refused_and_changes_nothing(tmp_path):
    model = vit()
    add_adapter(model, "a", AdapterConfig(num_tokens=4, init="perturbed"))
    with torch.no_grad():
        active = model(IMAGES)
    for call in (
        lambda name: save_adapter(model, name, tmp_path / "x.safetensors"),
        lambda name: remove_adapter(model, name),
        lambda name: merge_adapter(model, name),
        lambda name: set_adapter(model, name),
    ):
        for name in ("b", 3):
            with pytest.raises(ValueError, match=r"no adapter named .*; the model has \['a'\]"):
                call(name)
    for call in (save_adapter, remove_adapter, merge_adapter):
        with pytest.raises(ValueError, match="no adapter named None"):
            call(model, None, *([tmp_path / "x.safetensors"] if call is save_adapter else []))
    with torch.no_grad():
        assert torch.equal(model(IMAGES), active)  # still adapter a
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_tokens": True}, "num_tokens must be a positive int, got True"),
        ({"perturbation": float("nan")}, "perturbation must be a finite number >= 0, got nan"),
        ({"perturbation": -1.0}, "perturbation must be a finite number >= 0, got -1.0"),
        ({"blocks": 2}, r"blocks must be None \(every block\) or a list of block indices"),
        ({"blocks": (0, -1)}, r"list of block indices >= 0, got \(0, -1\)"),
        ({"kinds": "ffn"}, "kinds must be a non-empty subset"),
    ],
)
def test_bad_adapter_configs_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**{"num_tokens": 4, **settings})


@pytest.mark.parametrize("name", ["values", "keys", "update", "training", "a.b", ""])
def test_names_that_would_break_the_holders_are_refused_before_any_change(name):
    model = vit()
    before = keys_of(model)
    with pytest.raises(ValueError, match=repr(name)):
        add_adapter(model, name, AdapterConfig(num_tokens=4))
    assert keys_of(model) == before
    model.train().eval()  # still a working module


def test_save_adapter_never_replaces_a_users_file_unless_asked(tmp_path):
    model = vit()
    add_adapter(model, "a", AdapterConfig(num_tokens=4, init="perturbed"))
    mine = tmp_path / "a.safetensors"
    mine.write_text("precious")
    with pytest.raises(FileExistsError, match=f"{mine} exists; pass overwrite=True"):
        save_adapter(model, "a", mine)
    assert mine.read_text() == "precious"
    with pytest.raises(ValueError, match="is a directory"):
        save_adapter(model, "a", tmp_path)
    save_adapter(model, "a", mine, overwrite=True)
    assert set(load_file(mine)) and sorted(p.name for p in tmp_path.iterdir()) == [mine.name]


def tampered(tmp_path, edit):
    """A saved adapter file with ``edit`` applied to its tensors, metadata kept."""
    from safetensors import safe_open

    model = vit()
    add_adapter(model, "a", AdapterConfig(num_tokens=4, kinds=("ffn",), init="perturbed"))
    path = save_adapter(model, "a", tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    edit(state)
    save_file(state, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.update({"blocks.1.ffn.values": s["blocks.1.ffn.values"][:1]}),
            r"values \(1, 96\)",
        ),
        (lambda s: s.pop("blocks.0.ffn.keys"), "lacks its keys or values"),
    ],
)
def test_a_tampered_adapter_file_is_refused_before_the_model_changes(tmp_path, edit, message):
    path = tampered(tmp_path, edit)
    model = vit()
    before = keys_of(model)
    with pytest.raises(ValueError, match=message):
        load_adapter(model, path, "a")
    assert keys_of(model) == before
    load_adapter(model, tampered(tmp_path / "again", lambda s: None), "a")  # the name is free


def test_a_file_from_two_towers_is_refused_by_one_tower(tmp_path):
    pair = torch.nn.ModuleDict({"one": vit(), "two": vit()})
    add_adapter(pair, "a", AdapterConfig(num_tokens=4, kinds=("ffn",)))
    path = save_adapter(pair, "a", tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"'one.blocks.0.ffn' and 'two.blocks.0.ffn'"):
        load_adapter(vit(), path, "a")
    single = vit()
    add_adapter(single, "a", AdapterConfig(num_tokens=4, kinds=("ffn",)))
    path = save_adapter(single, "a", tmp_path / "single.safetensors")
    with pytest.raises(ValueError, match="which this model has several of"):
        load_adapter(torch.nn.ModuleDict({"one": vit(), "two": vit()}), path, "a")


def test_an_adapter_removed_inside_using_adapter_stays_removed():
    model = vit()
    add_adapter(model, "a", AdapterConfig(num_tokens=4))
    add_adapter(model, "b", AdapterConfig(num_tokens=4))
    with torch.no_grad():
        base = model.eval()(IMAGES)
        with using_adapter(model, "a"):
            remove_adapter(model, "b")
        assert torch.equal(model(IMAGES), base)  # b was active before: now none is


def test_save_pretrained_refuses_a_model_carrying_adapters(tmp_path):
    torch.manual_seed(0)
    model = TokenformerLM(lm_config("small"))
    add_adapter(model, "code", AdapterConfig(num_tokens=4))
    with pytest.raises(ValueError, match=r"carries token adapters \['code'\]: merge_adapter"):
        model.save_pretrained(tmp_path / "lm")
    assert not (tmp_path / "lm").exists()
    merge_adapter(model, "code")
    model.save_pretrained(tmp_path / "lm")
    assert isinstance(TokenformerLM.from_pretrained(tmp_path / "lm"), TokenformerLM)
