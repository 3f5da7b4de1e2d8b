import pytest
import torch
from torch import nn

from tokenformer_mm import TokenformerBlock


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def block_stack(depth: int = 2, dim: int = 32, heads: int = 4, tokens: int = 16, **kwargs):
    """A small stack of Tokenformer blocks: the smallest model that exercises every layer kind."""
    return nn.Sequential(
        *[
            TokenformerBlock(dim, heads, tokens, tokens, 4 * tokens, depth=depth, **kwargs)
            for _ in range(depth)
        ]
    )
