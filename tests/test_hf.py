"""The language tower through Hugging Face transformers: the Auto classes, generate, pipeline."""

import json
import subprocess
import sys

import pytest
import torch
import transformers

import tokenformer_mm.language.hf  # noqa: F401  (registers the Auto classes)
from tokenformer_mm.language import ByteTokenizer, TokenformerLM, lm_config

from .conftest import assert_equal_up_to_rounding


@pytest.fixture
def saved(tmp_path):
    """A small trained-looking LM (random weights) saved with its byte tokenizer."""
    model = TokenformerLM(lm_config("tiny")).eval()
    model.save_pretrained(tmp_path / "lm", tokenizer=ByteTokenizer())
    return model, tmp_path / "lm"


def _auto(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def test_a_saved_lm_loads_through_the_auto_classes_with_its_logits_and_tokenizer(saved):
    model, path = saved
    assert json.loads((path / "config.json").read_text())["model_type"] == "tokenformer"
    auto = _auto(path)
    assert type(auto).__name__ == "TokenformerForCausalLM"
    tokens = torch.randint(0, 320, (3, 17))
    with torch.no_grad():
        expected = model(tokens, all_logits=True)[0]
        assert_equal_up_to_rounding(auto(tokens).logits, expected)
        targets = torch.cat([tokens[:, 1:], torch.full((3, 1), -100)], dim=1)
        loss = auto(tokens, labels=tokens).loss  # labels are the inputs, shifted inside
        assert_equal_up_to_rounding(loss, model(tokens, targets)[1])
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    text = 'def f(x):\n    return "déjà vu" * x  # 漢字'
    assert tokenizer(text)["input_ids"] == ByteTokenizer().encode(text)
    assert tokenizer.decode(ByteTokenizer().encode(text)) == text
    assert tokenizer.eos_token_id == ByteTokenizer.eos_id == auto.generation_config.eos_token_id


def test_generate_is_the_models_own_greedy_decoding_and_left_padding_changes_nothing(saved):
    model, path = saved
    auto = _auto(path)
    prompts = [torch.randint(0, 256, (n,)) for n in (9, 4, 6)]
    width = max(len(p) for p in prompts)
    batch = torch.stack([torch.cat([torch.full((width - len(p),), 256), p]) for p in prompts])
    mask = torch.stack([(torch.arange(width) >= width - len(p)).long() for p in prompts])
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=256, eos_token_id=None)
    together = auto.generate(batch, attention_mask=mask, **settings)[:, width:]
    for i, prompt in enumerate(prompts):
        alone = auto.generate(prompt[None], **settings)[0, len(prompt) :]
        assert torch.equal(together[i], alone), i
        own = model.generate(prompt[None], 12, temperature=0)[0, len(prompt) :]
        assert torch.equal(alone, own), i


def test_inputs_embeds_prefix_decodes_through_the_cache_like_the_tokens_it_embeds(saved):
    model, path = saved
    auto = _auto(path)
    tokens = torch.randint(0, 256, (2, 8))
    embeds = model.embed(tokens).detach()
    settings = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=256)
    from_embeds = auto.generate(inputs_embeds=embeds, **settings)  # the new tokens only
    assert torch.equal(from_embeds, auto.generate(tokens, **settings)[:, 8:])
    with torch.no_grad():  # TokenformerLM itself: embeddings first, token ids continue them
        _, cache = model.forward_cached(None, None, inputs_embeds=embeds[:, :5])
        logits, _ = model.forward_cached(tokens[:, 5:], cache)
        assert_equal_up_to_rounding(logits, model(tokens, all_logits=True)[0][:, 5:])
    with pytest.raises(ValueError, match="exactly one of tokens"):
        model(tokens, inputs_embeds=embeds)
    # generate: an embedded prefix (tokens after it, or none) decodes as the tokens it embeds
    own = model.generate(tokens, 6, temperature=0)[:, 8:]
    assert torch.equal(
        model.generate(tokens[:, 3:], 6, temperature=0, inputs_embeds=embeds[:, :3])[:, 5:], own
    )
    assert torch.equal(model.generate(tokens[:, :0], 6, temperature=0, inputs_embeds=embeds), own)
    with pytest.raises(ValueError, match="do not fit the context of 64"):
        model.generate(tokens, 60, inputs_embeds=embeds)


def test_beam_search_sampling_and_the_text_generation_pipeline_run(saved):
    _, path = saved
    auto = _auto(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    prompt = torch.tensor([list(b"import os\n")])
    beams = auto.generate(prompt, max_new_tokens=5, num_beams=3, do_sample=False)
    sampled = auto.generate(
        prompt, max_new_tokens=5, do_sample=True, top_p=0.9, repetition_penalty=1.3
    )
    assert beams.shape == sampled.shape == (1, prompt.shape[1] + 5)
    generator = transformers.pipeline("text-generation", model=auto, tokenizer=tokenizer)
    out = generator("import os\n", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert out.startswith("import os\n") and len(out.encode()) >= len("import os\n") + 1


def test_what_transformers_saves_loads_back_into_tokenformer_lm_and_old_directories_load(
    saved, tmp_path
):
    model, path = saved
    _auto(path).save_pretrained(tmp_path / "by_transformers")
    back = TokenformerLM.from_pretrained(tmp_path / "by_transformers").eval()
    tokens = torch.randint(0, 320, (2, 11))
    with torch.no_grad():
        assert_equal_up_to_rounding(back(tokens)[0], model(tokens)[0])
    old = json.loads((path / "config.json").read_text())  # as written before the HF layout
    for key in ("model_type", "architectures", "tie_word_embeddings"):
        old.pop(key)
    (path / "config.json").write_text(json.dumps(old))
    assert TokenformerLM.from_pretrained(path).config == model.config


def test_the_language_tower_imports_without_transformers():
    code = (
        "import sys, tokenformer_mm.language\n"
        "assert 'transformers' not in sys.modules, 'the tower imported transformers'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_official_layout_checkpoint_converts_and_loads_through_the_auto_classes(tmp_path):
    from scripts.convert_official import main as convert
    from tokenformer_mm.language import load_official
    from tokenformer_mm.language.tokenizer import save_tokenizer

    from .test_language import official_state

    hub = tmp_path / "TokenFormer-tiny"  # the authors' Hub folder, synthetic weights
    hub.mkdir()
    config = lm_config("tiny", vocab_size=384)  # the byte-level tokenizer.json pads 257 to 384
    torch.save(official_state(config), hub / "pytorch_model.bin")
    (hub / "config.json").write_text(json.dumps({"num_attention_heads": config.num_heads}))
    save_tokenizer(ByteTokenizer(), hub, config.context_length)  # stands in for GPT-NeoX-20B's
    out = convert([str(hub), str(tmp_path / "hf")])
    auto = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    official = load_official(hub / "pytorch_model.bin", num_heads=config.num_heads).eval()
    tokens = torch.randint(0, 384, (2, 13))
    with torch.no_grad():
        assert_equal_up_to_rounding(auto(tokens).logits, official(tokens, all_logits=True)[0])
    text = "The meaning of life is"
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == list(text.encode())
    with pytest.raises(SystemExit):  # never over a folder with files
        convert([str(hub), str(out)])


def test_training_through_transformers_gives_the_models_gradients_with_checkpointing_too(saved):
    model, path = saved
    auto = _auto(path).train()
    tokens = torch.randint(0, 320, (2, 16))
    targets = torch.cat([tokens[:, 1:], torch.full((2, 1), -100)], dim=1)
    model.train()(tokens, targets)[1].backward()
    expected = model.blocks[0].ffn.key_tokens.grad
    for checkpointing in (False, True):
        auto.zero_grad()
        if checkpointing:
            auto.gradient_checkpointing_enable()
        assert auto.is_gradient_checkpointing == checkpointing
        auto(tokens, labels=tokens, use_cache=False).loss.backward()
        got = auto.model.blocks[0].ffn.key_tokens.grad
        assert_equal_up_to_rounding(got, expected)


def test_checkpointing_under_transformers_recomputes_blocks_with_the_default_use_cache(saved):
    """Before: ``use_cache`` (default True) took the cached path, which never checkpoints, so
    ``gradient_checkpointing_enable()`` under the HF Trainer saved no memory."""
    _, path = saved
    auto = _auto(path).train()
    calls = []  # entries into each block's FFN (cached and plain path; a recomputation too)
    for block in auto.model.blocks:
        block.ffn.register_forward_pre_hook(lambda *args: calls.append(1))
    tokens = torch.randint(0, 320, (2, 16))
    for checkpointing, runs_per_block in ((False, 1), (True, 2)):
        calls.clear()
        if checkpointing:
            auto.gradient_checkpointing_enable()
        output = auto(tokens, labels=tokens)  # use_cache as the config has it: True
        output.loss.backward()
        assert len(calls) == runs_per_block * len(auto.model.blocks)
    assert getattr(output, "cache", getattr(output, "past_key_values", None)) is None
    calls.clear()  # packed sequences (padding-free collators) pass position_ids: still recomputed
    positions = torch.arange(16).repeat(2, 1)
    auto(tokens, labels=tokens, position_ids=positions).loss.backward()
    assert len(calls) == 2 * len(auto.model.blocks)
    with torch.no_grad():  # in eval, generation keeps its cache
        assert auto.eval()(tokens).past_key_values is not None
