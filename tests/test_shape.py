"""The shape record: what growth changed, carried by every weights file, read by every loader."""

import torch
from torch import nn

from tokenformer_mm import grow_depth, grow_model, model_shape
from tokenformer_mm.growth import fit_to_shape, state_shape
from tokenformer_mm.language import TokenformerLM, lm_config
from tokenformer_mm.train import checkpoint

from .conftest import assert_equal_up_to_rounding


def _clip():
    import open_clip

    import tokenformer_mm.clip  # noqa: F401  (registers the CLIP configs)

    return open_clip, open_clip.create_model("TokenformerCLIP-micro").eval()


def _embeddings(model):
    torch.manual_seed(0)
    images, captions = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 20))
    with torch.no_grad():
        return torch.cat([model.encode_image(images), model.encode_text(captions)])


def test_a_clip_model_grown_in_both_towers_reloads_through_open_clip_and_the_engine(tmp_path):
    """Two block lists: the record names each, so a depth-grown tower fits (tensors alone could
    not say which list a model with two of them should deepen)."""
    open_clip, model = _clip()
    grow_depth(model.text, factor=2)
    report = grow_model(model.visual, factor=1.5, kinds=("ffn",))
    assert report.shape == model_shape(model.visual)
    expected = _embeddings(model)
    path = tmp_path / "model.safetensors"
    checkpoint.save_weights(model, path)
    assert checkpoint.read_shape(path) == model_shape(model)
    text_blocks = [n for n in model_shape(model)["depth"] if n.startswith("text")]
    assert [model_shape(model)["depth"][n] for n in text_blocks] == [4]  # micro: 2 blocks, x2

    reloaded = checkpoint.load_model(open_clip.create_model("TokenformerCLIP-micro").eval(), path)
    assert_equal_up_to_rounding(_embeddings(reloaded), expected)
    through_open_clip = open_clip.create_model("TokenformerCLIP-micro", pretrained=str(path))
    assert_equal_up_to_rounding(_embeddings(through_open_clip.eval()), expected)


def test_an_export_keeps_the_record_and_each_tower_config_follows_growth_inside_a_wrapper(
    tmp_path,
):
    lm = TokenformerLM(lm_config("tiny"))
    wrapper = nn.ModuleDict({"lm": lm})  # growth reaches the tower's own config through it
    grow_model(wrapper, factor=2, kinds=("ffn",), depth=2)
    assert lm.config.ffn_tokens == 2 * lm_config("tiny").ffn_tokens
    assert lm.config.depth == 2 * lm_config("tiny").depth
    run = tmp_path / "step_00000001"
    run.mkdir()
    checkpoint.save_weights(lm, run / checkpoint.MODEL_FILE)
    exported = checkpoint.export(run, tmp_path / "export.safetensors")
    assert checkpoint.read_shape(exported) == model_shape(lm)
    fresh = checkpoint.load_model(TokenformerLM(lm_config("tiny")), exported)
    assert fresh.config == lm.config and model_shape(fresh) == model_shape(lm)


def test_a_file_without_a_record_is_read_from_its_tensors_and_a_foreign_record_is_refused(
    tmp_path,
):
    import pytest
    import safetensors.torch

    grown = TokenformerLM(lm_config("tiny"))
    grow_model(grown, factor=2, depth=2)
    path = tmp_path / "old.safetensors"  # as written before files carried the record
    safetensors.torch.save_file({k: v.contiguous() for k, v in grown.state_dict().items()}, path)
    assert checkpoint.read_shape(path) is None
    fresh = TokenformerLM(lm_config("tiny"))
    assert state_shape(fresh, grown.state_dict()) == model_shape(grown)
    assert model_shape(checkpoint.load_model(fresh, path)) == model_shape(grown)

    foreign = {"depth": {"blocks": 2}, "tokens": {"decoder.0.q": 8}}
    with pytest.raises(ValueError, match=r"Pattention layers \['decoder.0.q'\].*lacks"):
        fit_to_shape(TokenformerLM(lm_config("tiny")), foreign)
    with pytest.raises(ValueError, match=r"block lists \['layers'\].*build the model"):
        fit_to_shape(TokenformerLM(lm_config("tiny")), {"depth": {"layers": 4}, "tokens": {}})


def test_a_grown_image_model_saved_for_timm_is_built_at_its_size_by_timm_itself(tmp_path):
    import pytest
    import timm

    from tokenformer_mm.vision import save_for_timm

    model = timm.create_model("tokenformer_micro_patch4_32", num_classes=10).eval()
    grow_model(model, factor=2, kinds=("ffn", "qkv"), depth=2)
    folder = save_for_timm(model, tmp_path / "grown")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model_shape(loaded) == model_shape(model) and len(loaded.feature_info) == 8
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_equal_up_to_rounding(loaded(images), model(images))
    with pytest.raises(ValueError, match="is not empty; choose a new folder"):
        save_for_timm(model, folder)
