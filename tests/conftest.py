import os

import pytest
import torch
from torch import nn

from tokenformer_mm import TokenformerBlock


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Embedded data sets are built once per session in a temporary cache (subprocesses too)."""
    os.environ["TOKENFORMER_MM_CACHE"] = str(tmp_path_factory.mktemp("tokenformer_mm_cache"))


def block_stack(depth: int = 2, dim: int = 32, heads: int = 4, tokens: int = 16, **kwargs):
    """A small stack of Tokenformer blocks: the smallest model that exercises every layer kind."""
    return nn.Sequential(
        *[
            TokenformerBlock(dim, heads, tokens, tokens, 4 * tokens, depth=depth, **kwargs)
            for _ in range(depth)
        ]
    )


def assert_same_function(after: torch.Tensor, before: torch.Tensor) -> None:
    """Exact growth adds only zero terms to every sum, so outputs differ by float rounding alone.

    The extra terms change the summation order (and the CPU's kernel blocking): fp32 rounds at
    2^-24 ≈ 6e-8 per operation, which over the few-hundred-term sums of a few layers stays well
    below 1e-5 of the outputs' scale; a change of function (official growth) is ~1e-2 of it.
    """
    scale = before.abs().max().item()
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5 * scale)
