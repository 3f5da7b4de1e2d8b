"""Mistakes a user makes that used to give a silent wrong result or an error without the file
or the fix (issue 15): each now does the right thing or stops, naming the value and the fix."""

import json

import pytest

from tokenformer_mm.shards import write_shards
from tokenformer_mm.train import Trainer, build_task
from tokenformer_mm.vision.sources import digits_samples

from .engine_utils import TINY_VISION, compose_config


def trainer_for(run_dir, overrides):
    cfg = compose_config("vision", [*TINY_VISION, f"run_dir={run_dir}", *overrides])
    return Trainer(cfg, build_task(cfg), run_dir)


@pytest.mark.parametrize("given", ["train_shards", "val_shards"])
def test_one_shard_pattern_without_the_other_is_an_error_not_the_embedded_set(tmp_path, given):
    """Before: train_shards alone (matching nothing, or real shards) trained on the digits."""
    write_shards(digits_samples("train"), tmp_path / "shards", "train", 500)
    pattern = str(tmp_path / "shards" / "train-*.tar")
    with pytest.raises(ValueError, match=rf"data.{given}=.* is set but data.* is not: give both"):
        trainer_for(tmp_path / "run", [f"data.{given}={pattern}"])
    assert not (tmp_path / "run" / "train_steps.csv").exists()


def test_make_shards_refuses_a_folder_with_shards_and_overwrite_replaces_them(tmp_path, capsys):
    """Before: old shards stayed beside the new ones and a train-*.tar pattern read both."""
    from scripts.make_shards import main

    out = tmp_path / "out"
    main(["digits", str(out), "--samples-per-shard", "100"])
    before = sorted(p.name for p in out.glob("*.tar"))
    with pytest.raises(SystemExit):  # argparse's error: the message names the folder and flag
        main(["digits", str(out), "--samples-per-shard", "1000"])
    assert f"{out} already holds 15 'train' shards" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.tar")) == before  # nothing written or removed
    with pytest.raises(ValueError, match=r"already holds 15 'train' shards .*--overwrite"):
        write_shards(digits_samples("train"), out, "train", 1000)
    main(["digits", str(out), "--samples-per-shard", "1000", "--overwrite"])
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
        "val-000000.tar",
    ]
    info = json.loads((out / "_info.json").read_text())["splits"]
    assert sum(info["train"]["shard_lengths"]) + sum(info["val"]["shard_lengths"]) == 1797
