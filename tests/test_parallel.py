"""Training past one process: FSDP2 and DDP under torchrun (2 processes, gloo on CPU), with growth.

The runs read text shards built so that 1 process x batch 16 and 2 processes x batch 8 see the
same global batches: every training shard packs into exactly 8 blocks of ``seq_len + 1`` tokens
(one document of 8 blocks minus its EOS), shards are split over ranks in order, and nothing is
shuffled within a shard. Per-rank mean losses then average to the 1-process loss.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from scripts.export import main as export_main
from tokenformer_mm.checkpoint_layout import newest_checkpoint
from tokenformer_mm.language import TokenformerLM
from tokenformer_mm.language.model import lm_config
from tokenformer_mm.shards import write_shards
from tokenformer_mm.train import Trainer, build_task, checkpoint
from tokenformer_mm.train import sharded as sharded_format

from .conftest import assert_equal_up_to_rounding
from .engine_utils import (
    ROOT,
    compose_config,
    run,
    step_losses,
    train_command,
    train_until_killed,
)

pytestmark = pytest.mark.slow  # torchrun runs: the full suite only

SEQ_LEN = 32
STEPS = 12


def text_shards(folder: Path) -> Path:
    rng = random.Random(0)
    words = ["the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "as", "with"]

    def document(index: int, blocks: int) -> dict[str, str]:
        text = ""
        while len(text) < blocks * (SEQ_LEN + 1):
            text += rng.choice(words) + " "
        return {"__key__": f"doc{index:05d}", "txt": text[: blocks * (SEQ_LEN + 1) - 1]}

    write_shards((document(i, 8) for i in range(2 * STEPS)), folder, "train", 1)
    write_shards((document(i, 4) for i in range(8)), folder, "val", 2)
    return folder


def language_run(shards: Path, run_dir: Path, extra: list[str]) -> list[str]:
    return [
        f"data.train_shards='{shards}/train-{{000000..{2 * STEPS - 1:06d}}}.tar'",
        f"data.val_shards={shards}/val-*.tar",
        f"data.seq_len={SEQ_LEN}",
        "data.shuffle_buffer=1",
        "data.num_workers=1",
        f"train.steps={STEPS}",
        "train.eval_every=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "optim.warmup_steps=2",
        "growth.schedule=[{step: 4, factor: 2, depth: 2}]",  # width and depth
        f"run_dir={run_dir}",
        *extra,
    ]


def test_fsdp_on_two_processes_matches_one_process_through_growth_and_a_sigkill(tmp_path):
    """The must-show of FSDP2: a 2-process run with a growth event at step 4 (x2 tokens, x2
    blocks: the new blocks start with no optimizer state) trains like a 1-process run; killed
    after its step-6 checkpoint and resumed on 2 processes it continues;
    its sharded checkpoint loads into one process (and exports to one safetensors file). It runs
    compiled until the kill and resumes uncompiled: the checkpoints are the same either way."""
    shards = text_shards(tmp_path / "shards")
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = compose_config("language", language_run(shards, one, ["train.batch_size=16"]))
    Trainer(cfg, build_task(cfg), one).fit()  # the reference, in this process

    fsdp = language_run(shards, two, ["train.batch_size=8", "train.parallel=fsdp"])
    compiled = ["train.compile=true", "train.compile_backend=aot_eager"]  # until the kill
    command = train_command([*fsdp, *compiled], config="language", processes=2)
    train_until_killed(command, two / "checkpoints" / "step_00000006")
    resumed_from = checkpoint.newest_intact(two / "checkpoints")
    assert resumed_from is not None and sharded_format.is_sharded(resumed_from)
    assert 6 <= int(resumed_from.name[5:]) < STEPS
    run(train_command([*fsdp, "resume=true"], config="language", processes=2))

    expected, got = step_losses(one), step_losses(two)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in expected:  # fp32 sums in another order (two half batches): ~1e-7 relative
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step

    final = newest_checkpoint(two / "checkpoints")
    sharded = checkpoint.load_weights(final)  # one process reads every rank's shards
    full = checkpoint.load_weights(newest_checkpoint(one / "checkpoints"))
    assert sharded.keys() == full.keys()
    assert sharded["blocks.0.ffn.key_tokens"].shape[0] == 1024  # grown from 512
    assert "blocks.3.ffn.key_tokens" in sharded  # and from 2 blocks to 4
    # AdamW turns rounding in near-zero gradients (new blocks) into steps of up to lr for a few
    # entries: weights agree to 1e-3 of their scale (measured 2.5e-4, 3 of 131,072 entries);
    # the function they compute (below) to 1e-4. A wrong shard would differ at the scale itself.
    for key, value in full.items():
        assert_equal_up_to_rounding(sharded[key], value, relative=1e-3)

    exported = tmp_path / "export" / "model.safetensors"
    export_main([str(two), str(exported)])  # scripts/export.py on the run: its newest checkpoint
    model = TokenformerLM(lm_config("small"))  # built at the initial size, resized on load
    checkpoint.load_model(model, exported)
    tokens = torch.randint(0, 256, (2, SEQ_LEN))
    reference = TokenformerLM(lm_config("small"))
    checkpoint.load_model(reference, newest_checkpoint(one / "checkpoints"))
    model.eval(), reference.eval()
    with torch.no_grad():
        assert_equal_up_to_rounding(
            model(tokens, all_logits=True)[0], reference(tokens, all_logits=True)[0], 1e-4
        )
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.export(final, exported)


DDP_SCRIPT = """
import shutil, sys
import torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from tests.engine_utils import compose_config
from tokenformer_mm.distributed import broadcast_from_main, gather_rows_to_main, sum_over_ranks
from tokenformer_mm.train import Trainer, build_task
from tokenformer_mm.train.parallel import full_model_state

cfg = compose_config("language", {overrides!r})
trainer = Trainer(cfg, build_task(cfg), {run_dir!r})
rank = trainer.rank

# The collectives the engine and the tasks use (tokenformer_mm.distributed), uneven row counts
rows = torch.arange(3 * (rank + 1) * 2, dtype=torch.float32).view(-1, 2) + 100 * rank
gathered = gather_rows_to_main(rows)  # rank 0 holds 3 rows, rank 1 holds 6
totals = sum_over_ranks({{"loss": torch.tensor(0.5 + rank), "count": torch.tensor(3 * (rank + 1))}})
metrics = broadcast_from_main({{"val/loss": 1.25}} if rank == 0 else None)
if rank == 0:
    expected = torch.cat([torch.arange(6.0).view(3, 2), torch.arange(12.0).view(6, 2) + 100])
    assert torch.equal(gathered, expected), gathered
else:
    assert gathered is None
assert totals == {{"loss": 2.0, "count": 9.0}}, totals
assert metrics == {{"val/loss": 1.25}}, metrics

def assert_same_on_every_rank(when):
    for model in (trainer.model, trainer.ema.module):  # DDP syncs the first, nothing the EMA
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        copies = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(copies, flat)
        assert torch.equal(copies[0], copies[1]), (when, type(model).__name__)
    return flat.numel()

trainer.fit(until=3)
before = assert_same_on_every_rank("before growth")
trainer.grow(2.0)
after = assert_same_on_every_rank("after growth")
assert after > before, (before, after)
trainer.fit(until=4)
assert_same_on_every_rank("after the step that follows growth")
assert trainer.train_module._orig_mod.module is trainer.model  # compiled DDP of the grown model

# A DDP checkpoint resumes under FSDP2 (e.g. once the grown model outgrows one GPU)
if rank == 0:
    shutil.copytree(trainer.ckpt_dir, {switched!r} + "/checkpoints")
dist.barrier()
trainer.fit(until=5)  # the reference: DDP goes on
switch = ["train.parallel=fsdp", "resume=true", "train.ema_decay=null", "train.compile=false"]
cfg = compose_config("language", [*{overrides!r}, *switch, "run_dir=" + {switched!r}])
sharded = Trainer(cfg, build_task(cfg), {switched!r})
assert sharded.sharded and sharded.step == 4
sharded.fit(until=5)
expected, got = trainer.eval_rows[-1]["train/loss"], sharded.eval_rows[-1]["train/loss"]
assert abs(got - expected) <= 1e-5 * abs(expected), (got, expected)  # step 5's loss
weights = full_model_state(sharded.model)  # and the weights after it
for name, value in trainer.model.state_dict().items():
    scale = value.abs().max().item()
    assert (weights[name] - value).abs().max().item() <= 1e-5 * scale, name
print("ranks identical", rank, before, after)
dist.destroy_process_group()
"""


def test_collectives_ddp_growth_and_a_switch_to_fsdp_on_two_processes(tmp_path):
    """The collectives (gather with uneven rows, sums, broadcast), then DDP growth: new rows
    drawn from one seed on every rank (dropout makes the ranks' own RNG streams differ), the
    old wrapper dropped first; the model and its EMA (which no wrapper broadcasts) are identical
    on both ranks after growth and after the next step. The training module is compiled (and
    recompiled around the grown model); a checkpoint is written at each pause. Its step-4
    checkpoint then resumes under FSDP2 and takes the step DDP takes."""
    shards = text_shards(tmp_path / "shards")
    overrides = language_run(shards, tmp_path / "run", ["train.batch_size=8"])
    overrides = [o for o in overrides if not o.startswith("growth.")]
    overrides += [
        "+model.overrides.dropout=0.1",
        "train.ema_decay=0.9",
        "growth.init=perturbed",  # the EMA draws its new keys too
        "train.compile=true",  # DDP compiled, recompiled after growth
        "train.compile_backend=aot_eager",
    ]
    script = tmp_path / "ddp_growth.py"
    script.write_text(
        DDP_SCRIPT.format(
            root=str(ROOT),
            overrides=overrides,
            run_dir=str(tmp_path / "run"),
            switched=str(tmp_path / "switched"),
        )
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = run([*launcher, "--nproc_per_node", "2", str(script)], timeout=300)
    assert result.stdout.count("ranks identical") == 2


def test_a_sharded_checkpoint_round_trips_and_a_truncated_shard_is_named(tmp_path):
    """``save_sharded`` / ``load_sharded`` in one process (what resume does on 1 rank), and the
    damage check resume relies on: a short ``.distcp`` file is named, and resume skips it."""
    torch.manual_seed(0)
    model = TokenformerLM(lm_config("tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 320, (2, 17))
    model(tokens[:, :-1], targets=tokens[:, 1:])[1].backward()
    optimizer.step()
    first = sharded_format.save_sharded(tmp_path, 1, model, optimizer, {"step": 1})
    second = sharded_format.save_sharded(tmp_path, 2, model, optimizer, {"step": 2})
    assert sharded_format.is_sharded(second) and checkpoint.damage(second) is None

    restored = TokenformerLM(lm_config("tiny"))
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    sharded_format.load_sharded(second, restored, restored_optimizer)
    for (name, param), other in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(param, other), name
        state, other_state = optimizer.state[param], restored_optimizer.state[other]
        assert torch.equal(state["exp_avg_sq"], other_state["exp_avg_sq"]), name
    assert checkpoint.load_weights(second).keys() == model.state_dict().keys()

    shard = next((second / checkpoint.SHARDED_DIR).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-100])
    assert f"{shard} is missing or truncated" in checkpoint.damage(second)
    assert checkpoint.newest_intact(tmp_path) == first


def test_fsdp_refuses_a_model_with_scalar_parameters_naming_them():
    """FSDP2 shards by rows: open_clip's 0-dim logit_scale cannot be sharded. The refusal names
    it and the way out, before any process group is needed."""
    import open_clip

    import tokenformer_mm.clip  # noqa: F401  (registers TokenformerCLIP-*)
    from tokenformer_mm.train import parallel

    model = open_clip.create_model("TokenformerCLIP-micro")
    with pytest.raises(ValueError, match=r"\['logit_scale'\].*train.parallel=ddp"):
        parallel.shard(model, torch.device("cpu"), world_size=2)
