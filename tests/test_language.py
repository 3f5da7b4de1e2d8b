import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from scripts.generate import main as generate_main
from tokenformer_mm import grow_model
from tokenformer_mm.language import (
    ByteTokenizer,
    TokenformerLM,
    lm_config,
    load_official,
    load_tokenizer,
)
from tokenformer_mm.language.data import PackBlocks, text_eval_loader, text_train_loader
from tokenformer_mm.language.sources import (
    STDLIB_TEST_FOLDERS,
    pydoc_documents,
    stdlib_documents,
    text_file_samples,
)
from tokenformer_mm.shards import write_shards
from tokenformer_mm.train import Trainer, build_task, load_run

from .conftest import assert_equal_up_to_rounding, assert_same_function
from .engine_utils import compose_config, fit_here, run, step_losses


def tiny_lm(**overrides) -> TokenformerLM:
    return TokenformerLM(lm_config("tiny", **overrides)).eval()


def all_logits(model: TokenformerLM, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(tokens, all_logits=True, **kwargs)[0]


def test_logits_at_t_ignore_later_tokens():
    model = tiny_lm()
    tokens = torch.randint(0, 320, (2, 20))
    changed = tokens.clone()
    changed[:, 12:] = torch.randint(0, 320, (2, 8))
    torch.testing.assert_close(
        all_logits(model, tokens)[:, :12], all_logits(model, changed)[:, :12]
    )
    assert not torch.allclose(all_logits(model, tokens)[:, 12:], all_logits(model, changed)[:, 12:])


def test_kv_cache_decoding_equals_full_forward_step_by_step():
    model = tiny_lm()
    tokens = torch.randint(0, 320, (2, 24))
    full = all_logits(model, tokens)
    logits, cache = model.forward_cached(tokens[:, :5], None)
    assert_equal_up_to_rounding(logits, full[:, :5])
    for t in range(5, 24):
        logits, cache = model.forward_cached(tokens[:, t : t + 1], cache)
        assert_equal_up_to_rounding(logits[:, 0], full[:, t])


def test_too_long_inputs_name_both_lengths_and_generation_crops_to_the_context():
    model = tiny_lm()
    with pytest.raises(ValueError, match="65 tokens is longer than the model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    prompt = torch.randint(0, 320, (2, 10))
    long = model.generate(prompt, max_new_tokens=70, temperature=0)
    assert long.shape == (2, 80) and torch.equal(
        long, model.generate(prompt, 70, 0, use_cache=False)
    )
    # every token past the context was predicted from the last 64 tokens alone (nanoGPT's crop)
    for t in (64, 71, 79):
        window = long[:, t - 64 : t]
        assert torch.equal(model(window)[0][:, -1].argmax(-1), long[:, t])


def test_generation_greedy_cache_stop_and_filters():
    model = tiny_lm()
    prompt = torch.randint(0, 320, (2, 6))
    greedy = model.generate(prompt, 20, temperature=0)
    assert greedy.shape == (2, 26) and torch.equal(greedy[:, :6], prompt)
    assert torch.equal(model.generate(prompt, 20, temperature=0, use_cache=False), greedy)
    assert torch.equal(model.generate(prompt, 20, top_k=1), greedy)  # top-1 sampling is greedy
    assert torch.equal(model.generate(prompt, 20, top_p=1e-6), greedy)
    stop = int(greedy[0, 8])  # the third generated token of the first row
    first = int((greedy[0, 6:] == stop).nonzero()[0])  # it may have been generated before
    stopped = model.generate(prompt[:1], 20, temperature=0, stop_token=stop)
    assert stopped.shape[1] == 6 + first + 1 and stopped[0, -1] == stop
    generator = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=generator)
    assert sampled.shape == (2, 26) and not torch.equal(sampled, greedy)


def official_state(config, generator=None, empty=False):
    """A state dict with the official GPT-NeoX sequential names and shapes (random or empty),
    written out from the official layout, not from the library's key map (a wrong map would
    otherwise build its own fixtures)."""
    d = config.dim
    shapes = {"sequential.0.word_embeddings.weight": (config.vocab_size, d)}
    for i in range(2, config.depth + 2):
        for layer, tokens in (
            ("attention.query", config.qkv_tokens),
            ("attention.key", config.qkv_tokens),
            ("attention.value", config.qkv_tokens),
            ("attention.proj", config.proj_tokens),
            ("mlp", config.ffn_tokens),
        ):
            for part in ("key", "value"):
                shapes[f"sequential.{i}.{layer}.{part}_param_tokens"] = (tokens, d)
    for part in ("weight", "bias"):
        shapes[f"sequential.{config.depth + 3}.norm.{part}"] = (d,)
    return {
        name: torch.empty(shape) if empty else torch.randn(shape, generator=generator) * 0.1
        for name, shape in shapes.items()
    }


def reference_forward(state, tokens, depth, heads):
    """The official math written out independently of the library (float64)."""
    sd = {k: v.double() for k, v in state.items()}
    x = sd["sequential.0.word_embeddings.weight"][tokens]
    B, T, C = x.shape
    hs = C // heads
    rot = int(hs * 0.25)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2).double() / rot))
    freqs = torch.outer(torch.arange(T).double(), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rope(t):
        r, p = t[..., :rot], t[..., rot:]
        rotated = torch.cat([-r[..., rot // 2 :], r[..., : rot // 2]], -1)
        return torch.cat([r * cos + rotated * sin, p], -1)

    def pattention(h, prefix):
        keys, values = sd[f"{prefix}.key_param_tokens"], sd[f"{prefix}.value_param_tokens"]
        s = h @ keys.T
        s = s / torch.norm(s, dim=-1, keepdim=True) * math.sqrt(keys.shape[0])
        return F.gelu(s) @ values

    for i in range(2, depth + 2):
        h = F.layer_norm(x, (C,), eps=1e-5)
        q, k, v = (
            pattention(h, f"sequential.{i}.attention.{n}").view(B, T, heads, hs).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        att = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + pattention(y, f"sequential.{i}.attention.proj")
        x = x + pattention(F.layer_norm(x, (C,), eps=1e-5), f"sequential.{i}.mlp")
    n = depth + 3
    x = F.layer_norm(
        x, (C,), sd[f"sequential.{n}.norm.weight"], sd[f"sequential.{n}.norm.bias"], 1e-5
    )
    return x @ sd["sequential.0.word_embeddings.weight"].T


def test_load_official_matches_an_independent_reference(tmp_path):
    config = lm_config(
        "tiny", dim=64, num_heads=4, qkv_tokens=24, proj_tokens=20, ffn_tokens=48, depth=3
    )
    state = official_state(config, torch.Generator().manual_seed(1))
    state["sequential.2.attention.rotary_emb.inv_freq"] = torch.ones(4)  # harmless extra buffer
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    model = load_official(path, num_heads=4).eval()
    assert (
        model.config.depth == 3 and model.config.proj_tokens == 20 and model.config.ffn_tokens == 48
    )
    assert model.blocks[0].ffn.tau.item() == pytest.approx(math.sqrt(48))
    tokens = torch.randint(0, config.vocab_size, (2, 17))
    expected = reference_forward(state, tokens, depth=3, heads=4)
    assert_equal_up_to_rounding(all_logits(model, tokens).double(), expected)


def test_load_official_150m_shapes_build_the_official_config():
    model = load_official(official_state(lm_config("150M"), empty=True))
    assert model.config == lm_config("150M", key_init="official")  # as the paper trained it
    assert 150e6 < model.num_params() < 160e6


def test_load_official_reports_every_mismatch_at_once():
    config = lm_config("tiny", dim=64, num_heads=4)
    state = official_state(config)
    del state["sequential.3.mlp.value_param_tokens"]
    state["sequential.2.attention.dense.weight"] = torch.zeros(1)
    expected = r"(?s)missing: sequential.3.mlp.value_param_tokens.*unexpected: sequential.2.att"
    with pytest.raises(ValueError, match=expected):
        load_official(state, num_heads=4)
    with pytest.raises(ValueError, match="pass num_heads"):
        load_official(official_state(lm_config("tiny", dim=96, num_heads=4)))


def test_growth_of_the_lm_is_exact_and_the_grown_lm_trains():
    model = tiny_lm()
    tokens = torch.randint(0, 320, (4, 33))
    with torch.no_grad():  # growth resizes parameters in place: no graph may outlive it
        before = all_logits(model, tokens)
    config = model.config
    report = grow_model(model, factor=2)
    assert report.added_params > 0
    assert_same_function(all_logits(model, tokens), before)
    # the model's record of its shape follows it (save_pretrained writes it)
    assert (model.config.qkv_tokens, model.config.ffn_tokens, model.config.depth) == (
        2 * config.qkv_tokens, 2 * config.ffn_tokens, config.depth,
    )  # fmt: skip
    grow_model(model, factor=2, kinds=["ffn"])
    assert (model.config.qkv_tokens, model.config.ffn_tokens) == (
        2 * config.qkv_tokens, 4 * config.ffn_tokens,
    )  # fmt: skip
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_pack_blocks_keeps_every_token_in_order():
    documents = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
    blocks = list(PackBlocks(4, eos_id=0, keep_remainder=True)(iter(documents)))
    flat = [t for b in blocks for t in b["tokens"][: b["length"]].tolist()]
    assert flat == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10, 0, 11, 0]
    assert [b["length"] for b in blocks] == [4, 4, 4, 3] and blocks[-1]["tokens"].tolist()[-1] == 0
    assert len(list(PackBlocks(4, 0, keep_remainder=False)(iter(documents)))) == 3


@pytest.mark.webdataset
def test_packing_across_two_workers_loses_and_duplicates_nothing(tmp_path):
    """Two shards of documents over disjoint alphabets, so each worker's blocks are recognisable:
    every worker's blocks, concatenated, are its documents with EOS between them."""
    alphabets = ["abcdefgh ", "nopqrstu "]
    expected = {}
    for shard, alphabet in enumerate(alphabets):
        g = torch.Generator().manual_seed(shard)
        docs = [
            "".join(alphabet[i] for i in torch.randint(0, 9, (int(n),), generator=g))
            for n in torch.randint(5, 60, (40,), generator=g)
        ]
        samples = ({"__key__": f"{shard}-{i}", "txt": d.encode()} for i, d in enumerate(docs))
        write_shards(samples, tmp_path, f"s{shard}", 1000)
        expected[shard] = [t for d in docs for t in [*d.encode(), 256]]
    tokenizer = ByteTokenizer()
    loader = text_eval_loader(str(tmp_path / "s*.tar"), tokenizer, 3, 15, num_workers=2)
    streams = {0: [], 1: []}
    for batch in loader:
        for tokens, length in zip(batch["tokens"], batch["length"], strict=True):
            block = tokens[:length].tolist()
            text = bytes(t for t in block if t < 256).decode()
            streams[0 if set(text) <= set(alphabets[0]) else 1] += block
    assert streams == expected
    train = text_train_loader(str(tmp_path / "s*.tar"), tokenizer, 4, 15, num_workers=2)
    batches = list(train)
    assert all(b["tokens"].shape == (4, 16) and (b["length"] == 16).all() for b in batches)


def test_tokenizers_round_trip_and_a_trained_bpe(tmp_path):
    text = "Tokenformer grows — by parameter tokens ✓"
    byte = load_tokenizer("byte")
    assert byte.decode(byte.encode(text)) == text and byte.vocab_size == 320 and byte.eos_id == 256
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(t for _, t in pydoc_documents("train")))
    out = tmp_path / "tokenizer.json"
    run(
        [sys.executable, "scripts/train_tokenizer.py", str(corpus), str(out), "--vocab-size", "600"]
    )
    bpe = load_tokenizer(str(out))
    ids = bpe.encode("The for statement is used to iterate")
    assert bpe.decode(ids) == "The for statement is used to iterate"
    assert len(ids) < 20 and bpe.vocab_size == 640 and bpe.eos_id == 0
    with pytest.raises(ValueError, match=r"neither 'byte' nor an existing tokenizer\.json"):
        load_tokenizer(str(tmp_path / "missing.json"))


@pytest.mark.webdataset
def test_make_shards_text_from_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third", "id": 3}\n')
    samples = list(text_file_samples([tmp_path / "a.txt", tmp_path / "b.jsonl"]))
    assert [s["__key__"] for s in samples] == ["a", "b-00000000", "b-00000002"]
    out = tmp_path / "out"
    inputs = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), str(out)]
    run([sys.executable, "scripts/make_shards.py", "text", *inputs, "--split", "train"])
    loader = text_eval_loader(str(out / "train-*.tar"), ByteTokenizer(), 8, 63, num_workers=0)
    batch = next(iter(loader))
    text = ByteTokenizer().decode(batch["tokens"][0, : batch["length"][0]].tolist())
    assert text == "first document" + "second" + "third"  # EOS (256) decodes to nothing


@pytest.mark.slow
def test_short_run_on_the_embedded_corpus_beats_the_unigram_baseline(tmp_path):
    steps = ["train.steps=120", "train.eval_every=120", "train.checkpoint_every=120"]
    overrides = [*steps, "data.seq_len=128", "optim.warmup_steps=20", f"run_dir={tmp_path}"]
    cfg = compose_config("language", overrides)
    task = build_task(cfg)
    val_tokens = torch.tensor(
        [t for b in task.eval_loader() for t in b["tokens"][0, : b["length"][0]]]
    )
    counts = torch.bincount(val_tokens, minlength=320).double()
    probs = counts[counts > 0] / counts.sum()
    unigram = -(probs * probs.log()).sum().item()  # nats per token
    summary = Trainer(cfg, task, tmp_path).fit()
    assert summary["metrics"]["val/loss"] < unigram - 0.4
    assert summary["metrics"]["val/ppl"] == pytest.approx(math.exp(summary["metrics"]["val/loss"]))


@pytest.mark.slow
def test_generate_script_from_a_run_and_from_an_official_file(tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = ["train.steps=3", "+model.overrides.context_length=64", "data.seq_len=32"]
    fit_here([*overrides, f"run_dir={run_dir}"], config="language")
    generate = [sys.executable, "scripts/generate.py", "--max-new-tokens", "20", "--seed", "1"]
    out = run([*generate, str(run_dir), "--prompt", "The "])
    assert out.stdout.startswith("The ") and "----" in out.stdout
    # export.py --hf: the run's model and tokenizer, loaded by transformers' Auto classes
    run([sys.executable, "scripts/export.py", str(run_dir), str(tmp_path / "hf"), "--hf"])
    import transformers

    import tokenformer_mm.language.hf  # noqa: F401  (registers the Auto classes)

    _, _, trained, _ = load_run(run_dir)
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("The for statement")
    tokens = torch.tensor([ids["input_ids"]])
    assert tokens[0].tolist() == list(b"The for statement")
    with torch.no_grad():
        assert_equal_up_to_rounding(auto(tokens).logits, trained.eval()(tokens, all_logits=True)[0])
    # official files, through the script's main() (its command line, in this process)
    generate_official = ["--max-new-tokens", "20", "--official", "--tokenizer", "byte"]
    sizes = dict(dim=768, depth=1, num_heads=12, qkv_tokens=8, proj_tokens=8, ffn_tokens=8)
    torch.save(official_state(lm_config("tiny", **sizes)), tmp_path / "bytes.bin")  # 320 tokens
    (sample,) = generate_main([str(tmp_path / "bytes.bin"), *generate_official])
    assert isinstance(sample, str) and capsys.readouterr().out.strip().endswith("-" * 40)
    # GPT-NeoX's vocabulary with the byte tokenizer: refused, naming both sizes (issue 15;
    # before: garbage text, rc 0)
    torch.save(official_state(lm_config("tiny", vocab_size=50304, **sizes)), tmp_path / "neox.bin")
    refusal = "tokenizer 'byte' has a vocabulary of 320 \\(padded\\), the model 50304"
    with pytest.raises(ValueError, match=refusal):
        generate_main([str(tmp_path / "neox.bin"), *generate_official])


def _screen(written):
    """What a terminal shows after ``written``: a carriage return goes back to the line's start
    and what follows overwrites it (a progress bar's redraws and its clearing)."""
    lines = []
    for line in written.split("\n"):
        shown = []
        for part_index, part in enumerate(line.split("\r")):
            column = 0 if part_index else len(shown)
            shown[column : column + len(part)] = part
        lines.append("".join(shown).rstrip())
    return lines


def test_generate_prints_whole_samples_and_clears_its_progress_bar(tmp_path, monkeypatch):
    """Before: tqdm's bar was left drawn between the samples, glued to their text."""
    import io

    class Terminal(io.StringIO):  # stdout and stderr on one terminal
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    sizes = dict(dim=768, depth=1, num_heads=12, qkv_tokens=8, proj_tokens=8, ffn_tokens=8)
    torch.save(official_state(lm_config("tiny", **sizes)), tmp_path / "bytes.bin")
    options = ["--official", "--tokenizer", "byte", "--num-samples", "3", "--temperature", "0"]
    options += ["--prompt", "ab", "--max-new-tokens", "4"]
    samples = generate_main([str(tmp_path / "bytes.bin"), *options])
    shown = "".join(f"{sample}\n{'-' * 40}\n" for sample in samples)  # bytes: no EOS text
    assert "sampling" in terminal.getvalue()  # the bar was drawn, on this terminal
    assert _screen(terminal.getvalue()) == _screen(shown)


def test_rotary_tables_are_made_once_per_forward_by_the_model(monkeypatch):
    """The LM makes the tables once per forward (and per decoding step); no block makes its own."""
    import tokenformer_mm.block
    import tokenformer_mm.language.model

    made = []
    real = tokenformer_mm.language.model.rotary_tables

    def counted(positions, *args):
        made.append(positions.tolist())
        return real(positions, *args)

    def forbidden(*args):
        raise AssertionError("a block made its own rotary tables")

    monkeypatch.setattr(tokenformer_mm.language.model, "rotary_tables", counted)
    monkeypatch.setattr(tokenformer_mm.block, "rotary_tables", forbidden)
    model = tiny_lm().eval()
    assert len(model.blocks) == 2
    model(torch.randint(0, 320, (2, 5)))
    assert made == [[0, 1, 2, 3, 4]]
    made.clear()
    model.generate(torch.randint(0, 320, (1, 3)), max_new_tokens=3)
    assert made == [[0, 1, 2], [3], [4]]  # the prompt, then one new position per step


def test_forward_returns_logits_and_loss_like_nanogpt():
    model = tiny_lm()
    tokens = torch.randint(0, 320, (2, 12))
    logits, loss = model(tokens)
    assert logits.shape == (2, 1, 320) and loss is None  # inference: the last position only
    targets = tokens.roll(-1, dims=1)
    targets[:, -1] = -100  # IGNORE_INDEX: not scored
    logits_all, loss = model(tokens, targets)
    assert logits_all.shape == (2, 12, 320)
    torch.testing.assert_close(logits, logits_all[:, -1:])
    expected = F.cross_entropy(logits_all[:, :-1].flatten(0, 1), targets[:, :-1].flatten())
    torch.testing.assert_close(loss, expected)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_lm().train()
    tokens = torch.randint(0, 320, (2, 16))
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        assert_equal_up_to_rounding(checkpointed, plain)


def test_crop_block_size_shortens_the_context():
    model = tiny_lm()
    model.crop_block_size(32)
    assert model.config.context_length == 32
    with pytest.raises(ValueError, match="33 tokens is longer than the model's context of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"context_length must be in \(0, 32\]"):
        model.crop_block_size(64)


def left_pad(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        tokens[i, width - len(prompt) :], mask[i, width - len(prompt) :] = prompt, 1
    return tokens, mask


def test_left_padded_forward_equals_each_prompt_alone():
    model = tiny_lm()
    prompts = [torch.randint(0, 320, (n,)) for n in (3, 9, 6)]
    tokens, mask = left_pad(prompts)
    batched = all_logits(model, tokens, attention_mask=mask)
    for i, prompt in enumerate(prompts):
        alone = all_logits(model, prompt[None])[0]
        assert_equal_up_to_rounding(batched[i, -len(prompt) :], alone)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_generation_with_attention_mask_equals_one_by_one(use_cache):
    model = tiny_lm()
    prompts = [torch.randint(0, 320, (n,)) for n in (2, 11, 5, 7)]
    tokens, mask = left_pad(prompts)
    new = 60  # the longest prompt outgrows the 64-token context: cropping with padding too
    batched = model.generate(tokens, new, temperature=0, attention_mask=mask, use_cache=use_cache)
    assert batched.shape == (4, tokens.shape[1] + new)
    for i, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], new, temperature=0)
        assert torch.equal(batched[i, tokens.shape[1] - len(prompt) :], alone[0]), i


def test_save_pretrained_and_from_pretrained_round_trip_a_grown_model(tmp_path):
    model = tiny_lm()
    grow_model(model, factor=2)
    model.save_pretrained(tmp_path / "lm")
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert config["ffn_tokens"] == 128 and config["qkv_tokens"] == 32  # the grown sizes
    loaded = TokenformerLM.from_pretrained(tmp_path / "lm").eval()
    tokens = torch.randint(0, 320, (2, 9))
    assert torch.equal(all_logits(loaded, tokens), all_logits(model, tokens))
    with pytest.raises(FileExistsError, match=r"already holds config\.json, model\.safetensors"):
        model.save_pretrained(tmp_path / "lm")
    model.save_pretrained(tmp_path / "lm", overwrite=True)


def test_from_pretrained_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a directory written by save_pretrained"):
        TokenformerLM.from_pretrained(tmp_path / "nowhere" / "deeper" / "lm")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        TokenformerLM.from_pretrained(tmp_path / "half")


@pytest.mark.slow
def test_grad_checkpointing_in_a_run_keeps_the_losses_and_the_flop_count(tmp_path):
    """train.grad_checkpointing=true: same training (recompute is exact), same model FLOPs."""
    runs = {}
    for enable in (False, True):
        run_dir = tmp_path / f"checkpointing-{enable}"
        overrides = [
            "train.steps=3",
            "train.eval_every=3",
            "train.batch_size=4",
            "data.seq_len=64",
            "++model.overrides.depth=1",
            f"train.grad_checkpointing={enable}",
            f"run_dir={run_dir}",
        ]
        cfg = compose_config("language", overrides)
        trainer = Trainer(cfg, build_task(cfg), run_dir)
        assert trainer.model.grad_checkpointing is enable
        trainer.fit()
        runs[enable] = trainer
    assert runs[True].flops_per_item == runs[False].flops_per_item
    losses = [step_losses(runs[enable].run_dir) for enable in (False, True)]
    assert losses[0].keys() == losses[1].keys() == {1, 2, 3}
    for step, loss in losses[0].items():  # fp32 on CPU: the recompute is the same arithmetic
        assert losses[1][step] == pytest.approx(loss, rel=1e-6), step


def test_stdlib_corpus_splits_by_file_deterministically_without_test_suites():
    train, val = list(stdlib_documents("train")), list(stdlib_documents("val"))
    assert [key for key, _ in stdlib_documents("val")] == [key for key, _ in val]
    keys = {key for key, _ in train} | {key for key, _ in val}
    assert len(keys) == len(train) + len(val)  # every file once, in one split
    assert 0.01 < len(val) / len(keys) < 0.03  # every 50th file
    assert not any(set(key.split("__")[:-1]) & STDLIB_TEST_FOLDERS for key in keys)
    assert "json__decoder" in keys and "class JSONDecoder" in dict(train + val)["json__decoder"]
    assert sum(len(text.encode()) for _, text in train) > 5_000_000  # megabytes: no repetition
    with_tests = {key for key, _ in stdlib_documents("train", include_tests=True)}
    assert len(with_tests) > len(train) and any(k.startswith("test__") for k in with_tests)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        next(stdlib_documents("test"))


@pytest.mark.slow
@pytest.mark.webdataset
def test_data_stdlib_builds_its_shards_on_first_use_and_trains(tmp_path):
    overrides = ["data=stdlib", "data.seq_len=64", "train.steps=2", "train.eval_every=2"]
    overrides += ["train.checkpoint_every=2", "optim.warmup_steps=1", f"run_dir={tmp_path}"]
    cfg = compose_config("language", overrides)
    task = build_task(cfg)
    assert "stdlib" in task.train_shards and "stdlib" in task.val_shards
    batch = next(iter(task.train_loader()))
    text = bytes(t for t in batch["tokens"][0].tolist() if t < 256).decode(errors="replace")
    assert any(word in text for word in ("def ", "import ", "return", "self"))
    summary = Trainer(cfg, task, tmp_path).fit()
    assert math.isfinite(summary["metrics"]["val/loss"])


def test_an_unknown_corpus_without_shards_names_the_embedded_ones():
    cfg = compose_config("language", ["data.name=books"])
    expected = r"data=books needs data.train_shards.*\['pydoc', 'stdlib'\]"
    with pytest.raises(ValueError, match=expected):
        build_task(cfg)


def test_a_directory_saved_with_a_value_grad_setting_still_loads(tmp_path):
    """Directories written while the value gradient was a setting record it; it never changed
    what the model computes, so they load and compute what was saved."""
    torch.manual_seed(0)
    model = TokenformerLM(lm_config("tiny")).eval()
    model.save_pretrained(tmp_path / "lm")
    config = tmp_path / "lm" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "value_grad": "centered"}))
    loaded = TokenformerLM.from_pretrained(tmp_path / "lm").eval()
    tokens = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])
