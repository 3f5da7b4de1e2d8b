"""The scripts and the writers under them, given bad inputs or failing half-way: a one-line
error naming the value or file, and nothing the user had overwritten or lost."""

import json

import pytest
import torch

from scripts.convert_official import main as convert_main
from scripts.evaluate import main as evaluate_main
from scripts.export import _graph_file
from scripts.make_shards import main as shards_main
from scripts.train_tokenizer import main as tokenizer_main
from tokenformer_mm.data import INFO_FILE
from tokenformer_mm.language.model import TokenformerLM, lm_config
from tokenformer_mm.shards import write_shards
from tokenformer_mm.train.checkpoint import load_weights


def samples(count, fail_at=None):
    for i in range(count):
        if i == fail_at:
            raise OSError("the input went away")
        yield {"__key__": f"{i:04d}", "txt": f"sample {i}".encode()}


def test_an_overwrite_that_fails_or_finds_nothing_keeps_the_old_shards(tmp_path):
    write_shards(samples(5), tmp_path, "train", samples_per_shard=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OSError, match="went away"):
        write_shards(samples(9, fail_at=5), tmp_path, "train", samples_per_shard=2, overwrite=True)
    with pytest.raises(ValueError, match="no samples to write as 'train' shards"):
        write_shards(samples(0), tmp_path, "train", overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    write_shards(samples(3), tmp_path, "train", samples_per_shard=2, overwrite=True)  # 3 -> 2
    assert sorted(p.name for p in tmp_path.glob("train-*")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert json.loads((tmp_path / INFO_FILE).read_text())["splits"]["train"]["num_samples"] == 3
    with pytest.raises(ValueError, match="no samples"):
        write_shards(samples(0), tmp_path / "new", "train")
    assert not (tmp_path / "new").exists()


def test_train_tokenizer_never_replaces_a_file_unless_asked(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 50)
    mine = tmp_path / "tokenizer.json"
    mine.write_text("precious")
    for argv, message in [
        ([str(corpus), str(mine)], "exists; pass --overwrite"),
        ([str(tmp_path / "nope.txt"), str(tmp_path / "t.json")], "no such text file"),
        ([str(corpus), str(tmp_path)], "is a directory"),
        ([str(corpus), str(tmp_path / "t.json"), "--min-frequency", "-1"], "must be >= 0"),
    ]:
        with pytest.raises(SystemExit):
            tokenizer_main([*argv, "--vocab-size", "300"])
        assert message in capsys.readouterr().err
    assert mine.read_text() == "precious"
    tokenizer_main([str(corpus), str(mine), "--vocab-size", "300", "--overwrite"])
    assert json.loads(mine.read_text())["model"]["type"] == "BPE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tokenizer.json"]


def test_script_refusals_name_the_value(tmp_path, capsys):
    for main, argv, message in [
        (evaluate_main, [str(tmp_path), "--batch-size", "0"], "--batch-size must be a positive"),
        (convert_main, ["x.bin", str(tmp_path / "o"), "--context-length", "0"], "must be >= 1"),
        (convert_main, ["x.bin", str(tmp_path / "o"), "--num-heads", "0"], "must be >= 1"),
        (shards_main, ["text", str(tmp_path / "no.txt"), str(tmp_path / "s")], "no such text"),
        (shards_main, ["pairs", str(tmp_path / "no"), str(tmp_path / "s")], "no folder at"),
        (shards_main, ["digits", str(tmp_path / "s"), "--samples-per-shard", "0"], ">= 1, got 0"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    (tmp_path / "model.onnx.data").write_text("precious")  # where ONNX keeps large weights
    with pytest.raises(ValueError, match=r"model\.onnx\.data exists"):
        _graph_file(tmp_path / "run", tmp_path / "model.onnx", onnx=True)
    assert (tmp_path / "model.onnx.data").read_text() == "precious"


def test_generate_refuses_a_top_k_below_one():
    model = TokenformerLM(lm_config("tiny")).eval()
    with pytest.raises(ValueError, match="top_k must be an int >= 1 or None, got 0"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, top_k=0)


def test_a_corrupt_weights_file_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x08junk")
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        load_weights(tmp_path)
