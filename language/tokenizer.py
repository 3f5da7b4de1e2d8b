"""Tokenizers: any Hugging Face ``tokenizer.json``, or bytes (no file needed).

Both expose ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``eos_id`` and ``vocab_size``
(padded to a multiple of 64 or 128, as the official models pad GPT-NeoX-20B's 50,277 to 50,304).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from tokenformer_mm.extras import missing_extra

EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]")


class Tokenizer(Protocol):
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _pad(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 and EOS = 256; vocabulary padded to 320."""

    eos_id = 256
    vocab_size = _pad(257, 64)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers`` tokenizer from a ``tokenizer.json`` (e.g. GPT-NeoX-20B's)."""

    def __init__(self, path: str | os.PathLike, eos_token: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ModuleNotFoundError as error:  # the [train] extra
            raise missing_extra(error, "train") from error

        self.path = str(path)
        self._tokenizer = _Tokenizer.from_file(self.path)
        names = [eos_token] if eos_token else EOS_NAMES
        ids = [self._tokenizer.token_to_id(n) for n in names]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(f"{path} has none of the end-of-text tokens {names}; pass eos_token=")
        self.eos_id = found[0]
        self.vocab_size = _pad(self._tokenizer.get_vocab_size(), 128)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids))

    def __getstate__(self) -> dict:  # DataLoader workers re-open the file instead of pickling
        return {"path": self.path, "eos": self._tokenizer.id_to_token(self.eos_id)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["eos"])


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, name: str) -> None:
    """A tokenizer whose (padded) vocabulary differs from the model's decodes garbage or
    indexes past the embedding: refuse it, naming both sizes."""
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"tokenizer {name!r} has a vocabulary of {tokenizer.vocab_size} (padded), the model "
            f"{vocab_size}: use the tokenizer the model was trained with"
        )


def load_tokenizer(spec: str) -> Tokenizer:
    """``"byte"`` or the path of a ``tokenizer.json``."""
    if spec == "byte":
        return ByteTokenizer()
    if not os.path.isfile(spec):
        raise ValueError(f"tokenizer {spec!r} is neither 'byte' nor an existing tokenizer.json")
    return HFTokenizer(spec)
