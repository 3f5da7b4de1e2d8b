"""Token adapters (tokenformer_mm.adapters): appended tokens trained alone on a frozen model."""

import pytest
import timm
import torch

import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models)
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


def language_model(**overrides) -> TokenformerLM:
    torch.manual_seed(0)
    return TokenformerLM(lm_config("small", **overrides)).eval()


def logits(model, tokens):
    return model(tokens, tokens)[0]


@pytest.fixture
def tokens():
    return torch.randint(0, 320, (4, 128), generator=torch.Generator().manual_seed(1))


def train_adapter(model, tokens, steps=3, lr=1e-2):
    """A few AdamW steps over every parameter (weight decay included): the frozen ones must not
    move, so the optimizer is given them all, as a careless user would."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(tokens[:, :-1], tokens[:, 1:])[1].backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("parametrization", ["standard", "mup"])
def test_zero_key_adapters_leave_the_lm_bit_for_bit_unchanged(tokens, parametrization):
    model = language_model(parametrization=parametrization)
    with torch.no_grad():
        before = logits(model, tokens)  # 512 tokens x 128: the fused path in the base layers
        layers = add_adapter(model, "code", AdapterConfig(num_tokens=16))
        assert len(layers) == 2 * 5  # 2 blocks x q, k, v, proj, FFN
        assert torch.equal(logits(model, tokens), before)


def test_zero_key_adapters_leave_the_image_model_bit_for_bit_unchanged():
    torch.manual_seed(0)
    model = timm.create_model("tokenformer_micro_patch4_32", num_classes=10).eval()
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        add_adapter(model, "digits", AdapterConfig(num_tokens=8, kinds=("ffn",), blocks=(2, 3)))
        assert torch.equal(model(images), before)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, TokenAdapter)]
    assert wrapped == ["blocks.2.ffn", "blocks.3.ffn"]


def test_only_the_adapter_trains_and_the_base_stays_byte_identical(tokens):
    model = language_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_adapter(model, "code", AdapterConfig(num_tokens=16))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter_" in n and n.endswith(".code") for n in trainable)
    before = logits(model, tokens).detach()
    train_adapter(model, tokens)
    for name, tensor in model.state_dict().items():
        if ".adapter_" not in name:
            assert torch.equal(tensor, base[name.replace(".base.", ".")]), name
    assert not torch.equal(logits(model, tokens), before)  # the adapter learned something
    remove_adapter(model, "code")  # the original model, exactly
    assert model.state_dict().keys() == base.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())


def test_save_load_merge_and_remove_round_trips(tokens, tmp_path):
    model = language_model(parametrization="mup")
    original = logits(model, tokens).detach()
    add_adapter(model, "code", AdapterConfig(num_tokens=16, init="perturbed"))
    train_adapter(model, tokens)
    adapted = logits(model, tokens).detach()
    path = save_adapter(model, "code", tmp_path / "code.safetensors")
    assert path.stat().st_size < 0.2 * sum(p.numel() * 4 for p in model.parameters())

    fresh = language_model(parametrization="mup")  # the same base, built again
    load_adapter(fresh, path, "code")
    assert torch.equal(logits(fresh, tokens), adapted)  # save / load: bit for bit
    with using_adapter(fresh, None):
        assert torch.equal(logits(fresh, tokens), original)

    merge_adapter(fresh, "code")  # the tokens appended for good: a plain, grown model
    assert not any(isinstance(m, TokenAdapter) for m in fresh.modules())
    assert fresh.blocks[0].ffn.num_tokens == lm_config("small").ffn_tokens + 16
    assert fresh.config.ffn_tokens == lm_config("small").ffn_tokens + 16
    merged = logits(fresh, tokens)
    scale = adapted.abs().max()
    assert (merged - adapted).abs().max() <= 1e-5 * scale  # one sum over n + m: rounding only


def test_several_adapters_on_one_base_switch_per_call(tokens):
    model = language_model()
    base = logits(model, tokens).detach()
    outputs = {}
    for name, lr in (("code", 1e-2), ("prose", 3e-2)):
        add_adapter(model, name, AdapterConfig(num_tokens=8))
        train_adapter(model, tokens, lr=lr)
        outputs[name] = logits(model, tokens).detach()
    assert not torch.equal(outputs["code"], outputs["prose"])
    for name in ("code", "prose"):
        with using_adapter(model, name):
            assert torch.equal(logits(model, tokens), outputs[name])
    set_adapter(model, None)
    assert torch.equal(logits(model, tokens), base)
    with pytest.raises(
        ValueError, match=r"no adapter named 'maths'; the model has \['code', 'prose'\]"
    ):
        set_adapter(model, "maths")
    with pytest.raises(ValueError, match="already has an adapter named 'code'"):
        add_adapter(model, "code", AdapterConfig(num_tokens=8))


def test_an_adapter_for_another_shape_is_refused_naming_both(tmp_path, tokens):
    model = language_model()
    add_adapter(model, "code", AdapterConfig(num_tokens=8, kinds=("ffn",)))
    path = save_adapter(model, "code", tmp_path / "code.safetensors")
    other = language_model(ffn_tokens=256)
    with pytest.raises(
        ValueError,
        match=r"for blocks\.0\.ffn with .*'num_tokens': 512.*model's layer has .*'num_tokens': 256",
    ):
        load_adapter(other, path, "code")
    assert not any(isinstance(m, TokenAdapter) for m in other.modules())  # nothing half-added


def test_a_new_head_trains_beside_the_tokens_and_travels_with_them(tmp_path):
    """New classes: the image tower with a new head (modules_to_save, as in peft) and FFN
    tokens; the trained head is the adapter's copy, the model's own head stays as it was."""
    torch.manual_seed(0)
    model = timm.create_model("tokenformer_micro_patch4_32", num_classes=10)
    model.reset_classifier(3)  # the new classes: a head the base never trained
    base = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
    config = AdapterConfig(num_tokens=8, kinds=("ffn",), modules_to_save=("head",))
    names = add_adapter(model, "shapes", config)
    assert names[-1] == "head" and model.head.in_features == model.num_features  # attributes
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "head.copies.shapes.weight" in trainable and "head.original.weight" not in trainable
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()
    adapted = model(images).detach()
    path = save_adapter(model, "shapes", tmp_path / "shapes.safetensors")
    remove_adapter(model, "shapes")  # the base, head included, byte for byte
    assert model.state_dict().keys() == base.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())

    load_adapter(model, path, "shapes")
    assert torch.equal(model(images), adapted)
    merge_adapter(model, "shapes")
    assert isinstance(model.head, torch.nn.Linear)  # plain modules again
    assert (model(images) - adapted).abs().max() <= 1e-5 * adapted.abs().max()

    other = timm.create_model("tokenformer_micro_patch4_32", num_classes=5)
    with pytest.raises(ValueError, match=r"for head with \{'weight': \[3, .*has \{'weight': \[5,"):
        load_adapter(other, path, "shapes")
    with pytest.raises(ValueError, match="modules_to_save names 'classifier', which"):
        add_adapter(other, "a", AdapterConfig(num_tokens=4, modules_to_save=("classifier",)))
    with pytest.raises(ValueError, match="module 'blocks' holds Pattention layers"):
        add_adapter(other, "a", AdapterConfig(num_tokens=4, modules_to_save=("blocks",)))
    with pytest.raises(ValueError, match="must be a list of module names"):
        AdapterConfig(num_tokens=4, modules_to_save="head")
    pair = torch.nn.ModuleDict({"vit": other, "extra": torch.nn.Sequential(torch.nn.LayerNorm(4))})
    with pytest.raises(ValueError, match=r"module 'extra\.0' is inside 'extra', which is saved"):
        add_adapter(pair, "a", AdapterConfig(num_tokens=4, modules_to_save=("extra", "extra.0")))


def test_bad_adapter_settings_are_refused():
    with pytest.raises(ValueError, match="num_tokens must be a positive int, got 0"):
        AdapterConfig(num_tokens=0)
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        AdapterConfig(num_tokens=4, kinds=("mlp",))
    model = language_model(norm="softmax")
    with pytest.raises(ValueError, match="a zero key gives a zero weight"):
        add_adapter(model, "code", AdapterConfig(num_tokens=4))
    with pytest.raises(ValueError, match=r"blocks \[7\] are not in TokenformerLM.*\[2\] blocks"):
        add_adapter(language_model(), "code", AdapterConfig(num_tokens=4, blocks=(0, 7)))
    with pytest.raises(ValueError, match="no Pattention layers of kinds"):
        add_adapter(torch.nn.Sequential(torch.nn.Linear(2, 2)), "c", AdapterConfig(4))


def test_timm_and_transformers_load_an_adapter_file(tmp_path, tokens):
    """timm.create_model(..., adapter=file) and a transformers model given load_adapter: the
    adapted outputs, whatever module the tower sits in."""
    import transformers

    import tokenformer_mm.language.hf  # noqa: F401  (registers the Auto classes)

    torch.manual_seed(0)
    vit = timm.create_model("tokenformer_micro_patch4_32", num_classes=10)
    weights = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(vit.state_dict(), str(weights))
    add_adapter(vit, "digits", AdapterConfig(num_tokens=8, init="perturbed"))
    images = torch.randn(4, 3, 32, 32)
    adapter = save_adapter(vit.eval(), "digits", tmp_path / "digits.safetensors")
    loaded = timm.create_model(
        "tokenformer_micro_patch4_32", pretrained=True, num_classes=10,
        pretrained_cfg_overlay={"file": str(weights), "num_classes": 10}, adapter=str(adapter),
    ).eval()  # fmt: skip
    with torch.no_grad():
        assert torch.equal(loaded(images), vit(images))

    lm = language_model()
    lm.save_pretrained(tmp_path / "lm")
    add_adapter(lm, "code", AdapterConfig(num_tokens=8, init="perturbed"))
    path = save_adapter(lm, "code", tmp_path / "code.safetensors")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert load_adapter(hf, path, "code")[0] == "model.blocks.0.q"  # the tower inside HF's model
    with torch.no_grad():
        expected = lm(tokens, all_logits=True)[0]
        assert (hf(tokens).logits - expected).abs().max() <= 1e-5 * expected.abs().max()
    with pytest.raises(FileNotFoundError, match="no token adapter file at"):
        load_adapter(hf, tmp_path / "missing.safetensors", "other")


def test_the_engine_trains_an_adapter_on_a_run_and_resumes_it(tmp_path):
    """``adapt.num_tokens`` / ``adapt.base``: the run starts from the trained weights (its first
    evaluation equals the base run's last, zero keys), trains only the adapter (the base weights
    in its checkpoints byte-identical), writes the adapter file with every checkpoint, and
    resumes like any run."""
    import safetensors.torch

    from tokenformer_mm.checkpoint_layout import newest_checkpoint
    from tokenformer_mm.train import Trainer, build_task

    from .engine_utils import TINY_VISION, compose_config

    def trainer(run_dir, overrides):
        cfg = compose_config("vision", [*TINY_VISION, f"run_dir={run_dir}", *overrides])
        return Trainer(cfg, build_task(cfg), run_dir)

    base = tmp_path / "base"
    trainer(base, ["train.steps=4", "train.eval_every=4"]).fit()
    trained = safetensors.torch.load_file(
        newest_checkpoint(base / "checkpoints") / "model.safetensors"
    )
    adapt = ["adapt.num_tokens=4", f"adapt.base={base}", "adapt.name=digits", "train.eval_every=2",
             "adapt.modules_to_save=[head]"]  # fmt: skip
    run = trainer(tmp_path / "adapt", [*adapt, "train.steps=4", "train.checkpoint_every=2"])
    plain = trainer(tmp_path / "plain", ["train.steps=1"]).model
    plain.load_state_dict(trained)
    with torch.no_grad():  # zero keys: the adapted model is the trained one, bit for bit
        assert run.task.evaluate(run.model, run.eval_loader) == run.task.evaluate(
            plain, run.eval_loader
        )
    run.fit(until=2)
    run = trainer(tmp_path / "adapt", [*adapt, "train.steps=4", "resume=true"])
    assert run.step == 2
    run.fit()
    last = newest_checkpoint(tmp_path / "adapt" / "checkpoints")
    weights = safetensors.torch.load_file(last / "model.safetensors")
    for name, tensor in trained.items():
        key = next(
            k for k in weights if k.replace(".base.", ".").replace(".original.", ".") == name
        )
        assert torch.equal(weights[key], tensor), name
    adapter = last / "adapter_digits.safetensors"
    load_adapter(plain, adapter, "digits")  # the shipped file: the trained run's model again
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in weights.items())
    assert not torch.equal(weights["head.copies.digits.weight"], trained["head.weight"])
    with pytest.raises(ValueError, match="adapt trains tokens appended to a frozen model"):
        trainer(tmp_path / "bad", [*adapt, "growth.schedule=[{step: 2, factor: 2}]"])
