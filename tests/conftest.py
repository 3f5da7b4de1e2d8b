import os

import pytest
import torch
from torch import nn

from tokenformer_mm import TokenformerBlock

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Each xdist worker (and the runs it launches, through the environment) takes its share of
    # the cores: two workers of two threads each on two cores spend the extra time spinning.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The files of the longest slow tests (measured: the README's chains, torchrun runs, the CLIP
# and growth-study runs, 35-100 s each on 2 cores), scheduled before the other slow tests.
LONGEST_FIRST = (
    "test_readme.py",
    "test_parallel.py",
    "test_preemption.py",
    "test_clip.py",
    "test_growth_study.py",
    "test_world_sizes.py",
)


def pytest_collection_modifyitems(items):
    """The slow tests first, the longest of them before the rest: xdist's workers then end
    together instead of one waiting on a long test that started last."""

    def order(item) -> tuple[bool, int]:
        name = item.path.name
        rank = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return item.get_closest_marker("slow") is None, rank

    items.sort(key=order)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Embedded data sets are built once per session in a temporary cache (subprocesses too),
    one for every xdist worker: their base folders share a parent (``cached_shards`` builds in
    a staging folder and renames, so two workers never see half a data set)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    os.environ["TOKENFORMER_MM_CACHE"] = str(shared / "tokenformer_mm_cache")


def block_stack(depth: int = 2, dim: int = 32, heads: int = 4, tokens: int = 16, **kwargs):
    """A small stack of Tokenformer blocks: the smallest model that exercises every layer kind."""
    return nn.Sequential(
        *[
            TokenformerBlock(dim, heads, tokens, tokens, 4 * tokens, depth=depth, **kwargs)
            for _ in range(depth)
        ]
    )


def assert_equal_up_to_rounding(
    actual: torch.Tensor, expected: torch.Tensor, relative: float = 1e-5
) -> None:
    """Two computations of one fp32 function agree to ``relative`` of the values' scale.

    Tolerances are relative to the largest value, not absolute and not elementwise: a different
    summation order (another CPU's kernel blocking, a cached vs a full pass, other batch shapes)
    rounds each sum differently at 2^-24 ≈ 6e-8 per operation, which over the few-hundred-term
    sums of a few layers stays below 1e-5 of the scale, while values near zero carry the error
    of the large terms that cancelled into them. A wrong computation differs by ~1e-2 or more.
    """
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=relative * scale)


def assert_same_function(after: torch.Tensor, before: torch.Tensor) -> None:
    """Exact growth adds only zero terms to every sum, so outputs differ by float rounding alone
    (the extra terms change the summation order); a change of function (official growth) is
    ~1e-2 of the outputs' scale."""
    assert_equal_up_to_rounding(after, before)
