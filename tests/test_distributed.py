"""The collectives, under torchrun with 2 processes (gloo on CPU), as the engine uses them."""

from __future__ import annotations

import sys

from .engine_utils import run

SCRIPT = """
import pathlib, sys, torch, torch.distributed as dist
from tokenformer_mm.distributed import (
    broadcast_from_main, gather_rows_to_main, setup_distributed, sum_over_ranks,
)
rank, world, _ = setup_distributed("cpu")
rows = torch.arange(3 * (rank + 1) * 2, dtype=torch.float32).view(-1, 2) + 100 * rank
gathered = gather_rows_to_main(rows)  # rank 0 holds 3 rows, rank 1 holds 6
totals = sum_over_ranks({"loss": torch.tensor(0.5 + rank), "count": torch.tensor(3 * (rank + 1))})
metrics = broadcast_from_main({"val/loss": 1.25} if rank == 0 else None)
if rank == 0:
    expected = torch.cat([torch.arange(6.0).view(3, 2), torch.arange(12.0).view(6, 2) + 100])
    assert torch.equal(gathered, expected), gathered
else:
    assert gathered is None
assert totals == {"loss": 2.0, "count": 9.0}, totals
assert metrics == {"val/loss": 1.25}, metrics
pathlib.Path(sys.argv[1], f"rank{rank}.ok").touch()
dist.destroy_process_group()
"""


def test_gather_sum_and_broadcast_across_two_processes(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    run([*launcher, "--nproc_per_node", "2", str(script), str(tmp_path)], timeout=120)
    assert sorted(p.name for p in tmp_path.glob("*.ok")) == ["rank0.ok", "rank1.ok"]
