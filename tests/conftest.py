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
