import open_clip
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from tokenformer_mm import grow_model
from tokenformer_mm.clip import MODEL_NAMES, TokenformerTextEncoder
from tokenformer_mm.clip.metrics import clip_metrics
from tokenformer_mm.clip.pairs import digits_pair_samples
from tokenformer_mm.train import Trainer, build_task

from .conftest import assert_same_function
from .engine_utils import compose_config


@pytest.mark.slow
def test_every_tokenformer_clip_name_builds_encodes_and_trains():
    assert [f"TokenformerCLIP-{n}" for n in ("base", "micro", "small", "tiny")] == MODEL_NAMES
    assert all(name in open_clip.list_models() for name in MODEL_NAMES)
    for name in MODEL_NAMES:
        model, _, _ = open_clip.create_model_and_transforms(name, force_image_size=32)
        assert isinstance(model.text, TokenformerTextEncoder)
        assert model.visual.trunk.pretrained_cfg["architecture"].startswith("tokenformer_")
        tokens = open_clip.get_tokenizer(name)(["a photo of the digit seven.", "the number two."])
        image_features, text_features, scale = model(torch.randn(2, 3, 32, 32), tokens)
        assert (
            image_features.shape
            == text_features.shape
            == (2, model.text.text_projection.out_features)
        )
        open_clip.ClipLoss()(image_features, text_features, scale).backward()
        assert model.text.token_embedding.weight.grad is not None
        assert model.visual.trunk.blocks[0].q.key_tokens.grad is not None


def test_image_statistics_come_from_the_timm_config(caplog):
    """What open_clip logs and stores as the preprocessing is what the transform does (before:
    its log line gave OpenAI's mean and std, the transform ImageNet's)."""
    import ast

    with caplog.at_level("INFO"):
        model, _, preprocess = open_clip.create_model_and_transforms("TokenformerCLIP-micro")
    normalize = preprocess.transforms[-1]
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert (tuple(normalize.mean), tuple(normalize.std)) == (imagenet["mean"], imagenet["std"])
    (logged,) = [r.getMessage() for r in caplog.records if "preprocessing configuration" in r.msg]
    stored = open_clip.get_model_preprocess_cfg(model)
    for cfg in (ast.literal_eval(logged.split(": ", 1)[1]), model.visual.preprocess_cfg, stored):
        assert {key: tuple(cfg[key]) for key in imagenet} == imagenet
    assert (model.visual.image_mean, model.visual.image_std) == (imagenet["mean"], imagenet["std"])
    _, _, forced = open_clip.create_model_and_transforms(
        "TokenformerCLIP-micro", image_mean=(0.5, 0.5, 0.5)
    )
    assert tuple(forced.transforms[-1].mean) == (0.5, 0.5, 0.5)  # an explicit choice still wins


def test_safetensors_checkpoint_loads_back_through_open_clip_bit_exactly(tmp_path):
    model = open_clip.create_model("TokenformerCLIP-micro").eval()
    path = tmp_path / "clip.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = open_clip.create_model("TokenformerCLIP-micro", pretrained=str(path)).eval()
    images, tokens = (
        torch.randn(2, 3, 32, 32),
        open_clip.get_tokenizer("TokenformerCLIP-micro")(["a", "b"]),
    )
    assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))


def test_growing_a_clip_model_is_exact_for_both_encoders():
    model = open_clip.create_model("TokenformerCLIP-micro").eval()
    images, tokens = (
        torch.randn(3, 3, 32, 32),
        open_clip.get_tokenizer("TokenformerCLIP-micro")(["a", "bc", "d"]),
    )
    with torch.no_grad():
        image_before, text_before = model.encode_image(images), model.encode_text(tokens)
    report = grow_model(model, factor=2)
    assert {layer.name.split(".")[0] for layer in report.layers} == {"visual", "text"}
    with torch.no_grad():
        assert_same_function(model.encode_image(images), image_before)
        assert_same_function(model.encode_text(tokens), text_before)


def test_text_tower_lock_and_checkpointing():
    text = open_clip.create_model("TokenformerCLIP-micro").text
    text.lock(unlocked_layers=1)
    trainable = {name for name, p in text.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("blocks.1.", "ln_final", "text_projection")) for n in trainable
    )
    assert not text.blocks[0].q.key_tokens.requires_grad
    tokens = open_clip.get_tokenizer("TokenformerCLIP-micro")(["a photo"])
    expected = text(tokens)
    text.set_grad_checkpointing()
    torch.testing.assert_close(text(tokens), expected)


def test_digits_pairs_have_captions_and_labels():
    sample = next(digits_pair_samples("val"))
    assert (
        sample["txt"] == b"a photo of the digit zero." and sample["cls"] == b"0" and "jpg" in sample
    )


@pytest.mark.slow
def test_short_clip_run_lifts_zero_shot_accuracy_well_above_chance(tmp_path):
    overrides = [
        "train.steps=120",
        "train.eval_every=120",
        "train.checkpoint_every=120",
        f"run_dir={tmp_path}",
    ]
    cfg = compose_config("clip", overrides)
    summary = Trainer(cfg, build_task(cfg), tmp_path).fit()
    metrics = summary["metrics"]
    assert metrics["val/zeroshot_top1"] >= 30  # chance: 10 %
    assert metrics["val/i2t_r1"] > 10 and metrics["val/t2i_r1"] > 10


def test_unknown_clip_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown CLIP model 'TokenformerCLIP-huge'"):
        build_task(
            compose_config("clip", ["model.name=TokenformerCLIP-huge", f"run_dir={tmp_path}"])
        )


@pytest.mark.slow
@pytest.mark.webdataset
def test_make_shards_pairs_from_a_captioned_folder(tmp_path):
    import sys

    from tokenformer_mm.clip.pairs import pair_loader
    from tokenformer_mm.clip.task import ClipTask  # noqa: F401  (the domain's imports resolve)

    from .engine_utils import run
    from .test_vision_data import photo

    folder = tmp_path / "captioned" / "sub"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.png").write_bytes(photo(60, 40, fmt="PNG"))
        (folder / f"{i}.txt").write_text(f"picture number {i}")
    (folder / "orphan.png").write_bytes(photo(60, 40, fmt="PNG"))  # no caption: skipped
    run(
        [
            sys.executable,
            "scripts/make_shards.py",
            "pairs",
            str(tmp_path / "captioned"),
            str(tmp_path / "out"),
        ]
    )
    tokenizer = open_clip.get_tokenizer("TokenformerCLIP-micro")
    loader = pair_loader(
        str(tmp_path / "out" / "train-*.tar"), tokenizer, 8, 32, train=False, num_workers=0
    )
    batch = next(iter(loader))
    assert sorted(batch["key"]) == [f"sub/{i}" for i in range(5)]
    assert torch.equal(
        batch["text"][batch["key"].index("sub/3")], tokenizer(["picture number 3"])[0]
    )
    assert batch["image"].shape == (5, 3, 32, 32) and (batch["label"] == -1).all()


def full_matrix_clip_metrics(image, text, tokens, labels, classes, scale):
    """The CLIP metrics from the whole N x N similarity matrix, which clip_metrics never builds."""
    logits = scale * image @ text.T
    target = torch.arange(len(image))
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    same_caption = (tokens[:, None, :] == tokens[None, :, :]).all(-1)  # (N, N)
    zero_shot = (image @ classes.T).argmax(-1) == labels
    return {
        "val/loss": loss.item(),
        "val/zeroshot_top1": 100 * zero_shot[labels >= 0].float().mean().item(),
        "val/i2t_r1": 100 * same_caption[target, logits.argmax(1)].float().mean().item(),
        "val/t2i_r1": 100 * same_caption[target, logits.argmax(0)].float().mean().item(),
    }


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_clip_metrics_equal_the_full_matrix(chunk_size):
    n, dim = 90, 16
    labels = torch.randint(0, 10, (n,))
    labels[::9] = -1  # unlabelled pairs count for retrieval only
    # captions repeat (4 templates x 10 classes), so a retrieved duplicate counts as a hit
    tokens = torch.stack([labels, torch.randint(0, 4, (n,)), torch.full((n,), 7)], dim=1)
    text = F.normalize(torch.randn(n, dim), dim=-1)
    image = F.normalize(text + 0.8 * torch.randn(n, dim), dim=-1)  # related, not identical
    classes = F.normalize(torch.randn(10, dim), dim=-1)
    got = clip_metrics(image, text, tokens, labels, classes, 20.0, chunk_size=chunk_size)
    expected = full_matrix_clip_metrics(image, text, tokens, labels, classes, 20.0)
    assert got.keys() == expected.keys()
    assert got["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-6)  # fp32 mean of 90
    for key in ("val/zeroshot_top1", "val/i2t_r1", "val/t2i_r1"):
        assert got[key] == expected[key], key  # argmax of the same scores: identical
    assert 0 < got["val/i2t_r1"] < 100 and 0 < got["val/t2i_r1"] < 100


def test_a_grown_checkpoint_loads_back_through_open_clip(tmp_path):
    model = open_clip.create_model("TokenformerCLIP-micro").eval()
    grow_model(model, factor=2)
    path = tmp_path / "grown.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = open_clip.create_model("TokenformerCLIP-micro", pretrained=str(path)).eval()
    assert loaded.text.blocks[0].ffn.num_tokens == model.text.blocks[0].ffn.num_tokens == 768
    images = torch.randn(2, 3, 32, 32)
    tokens = open_clip.get_tokenizer("TokenformerCLIP-micro")(["a", "b"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
