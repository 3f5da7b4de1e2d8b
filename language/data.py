"""Text-corpus webdataset pipeline: workers tokenize documents and pack them into blocks.

Shards hold raw documents (``txt``, or ``json`` with a text field). Each DataLoader worker
tokenizes its documents and packs them, EOS between documents, into blocks of ``seq_len + 1``
tokens (inputs are ``block[:-1]``, targets ``block[1:]``). Training drops each worker's last
partial block; evaluation keeps it, padded, with its ``length``, so every token is scored once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from tokenformer_mm.data import ShardedStream, expand_shards, stream_loader

from .tokenizer import Tokenizer


def read_text(sample: dict[str, Any], text_field: str = "text") -> str:
    if "txt" in sample:
        return sample["txt"].decode("utf-8")
    if "json" in sample:
        return json.loads(sample["json"])[text_field]
    raise KeyError(f"sample has no 'txt' or 'json' entry, only {sorted(sample)}")


class TokenizeDocument:
    """Sample -> token ids of its text (runs in the workers)."""

    def __init__(self, tokenizer: Tokenizer, text_field: str = "text") -> None:
        self.tokenizer = tokenizer
        self.text_field = text_field

    def __call__(self, sample: dict[str, Any], rng: random.Random | None = None) -> list[int]:
        return self.tokenizer.encode(read_text(sample, self.text_field))


class PackBlocks:
    """Documents -> fixed blocks of ``block_len`` tokens, EOS after every document."""

    def __init__(self, block_len: int, eos_id: int, keep_remainder: bool) -> None:
        self.block_len = block_len
        self.eos_id = eos_id
        self.keep_remainder = keep_remainder

    def __call__(self, documents: Iterator[list[int]]) -> Iterator[dict[str, Any]]:
        buffer: list[int] = []
        for document in documents:
            buffer += document
            buffer.append(self.eos_id)
            while len(buffer) >= self.block_len:
                yield self._block(buffer[: self.block_len])
                del buffer[: self.block_len]
        if self.keep_remainder and buffer:
            yield self._block(buffer)

    def _block(self, tokens: list[int]) -> dict[str, Any]:
        padded = tokens + [self.eos_id] * (self.block_len - len(tokens))
        return {"tokens": torch.tensor(padded, dtype=torch.long), "length": len(tokens)}


def _text_stream(
    shards: str | Sequence[str],
    tokenizer: Tokenizer,
    seq_len: int,
    text_field: str,
    train: bool,
    **stream_args: Any,
) -> ShardedStream:
    """Documents tokenized and packed into ``seq_len + 1`` blocks; training drops remainders."""
    return ShardedStream(
        expand_shards(shards),
        TokenizeDocument(tokenizer, text_field),
        pack=PackBlocks(seq_len + 1, tokenizer.eos_id, keep_remainder=not train),
        shuffle=train,
        **stream_args,
    )


def text_train_loader(
    shards: str | Sequence[str],
    tokenizer: Tokenizer,
    batch_size: int,
    seq_len: int,
    num_workers: int = 2,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    text_field: str = "text",
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """Batches ``{"tokens": (B, seq_len + 1), "length": (B,)}`` of shuffled documents."""
    stream = _text_stream(
        shards,
        tokenizer,
        seq_len,
        text_field,
        train=True,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return stream_loader(stream, batch_size, num_workers, drop_last=True)


def text_eval_loader(
    shards: str | Sequence[str],
    tokenizer: Tokenizer,
    batch_size: int,
    seq_len: int,
    num_workers: int = 2,
    text_field: str = "text",
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """Every document once across ranks, in order; last blocks padded (see ``length``)."""
    stream = _text_stream(
        shards, tokenizer, seq_len, text_field, train=False, rank=rank, world_size=world_size
    )
    return stream_loader(stream, batch_size, num_workers, drop_last=False)
