"""Tokenizers: any Hugging Face ``tokenizer.json``, or bytes (no file needed).

Both expose ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``eos_id`` and ``vocab_size``
(padded to a multiple of 64 or 128, as the official models pad GPT-NeoX-20B's 50,277 to 50,304).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

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


TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def save_tokenizer(tokenizer: Tokenizer, directory: Path, context_length: int) -> list[Path]:
    """``tokenizer`` as the files ``AutoTokenizer`` reads (``tokenizer.json`` and
    ``tokenizer_config.json``): a ``HFTokenizer``'s own file, or the byte tokenizer as a
    byte-level BPE without merges, which encodes every text to exactly its UTF-8 bytes."""
    if isinstance(tokenizer, HFTokenizer):
        (directory / TOKENIZER_FILE).write_bytes(Path(tokenizer.path).read_bytes())
        eos = tokenizer._tokenizer.id_to_token(tokenizer.eos_id)
    elif isinstance(tokenizer, ByteTokenizer):
        _byte_level_tokenizer().save(str(directory / TOKENIZER_FILE))
        eos = BYTE_EOS
    else:
        raise TypeError(
            f"cannot write a {type(tokenizer).__name__} for AutoTokenizer; expected a "
            "ByteTokenizer or an HFTokenizer"
        )
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "pad_token": eos,  # batched generation pads with it (left), as GPT-NeoX's users do
        "padding_side": "left",
        "model_max_length": context_length,
    }
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return [directory / TOKENIZER_FILE, directory / TOKENIZER_CONFIG_FILE]


BYTE_EOS = "<|endoftext|>"


def _byte_level_tokenizer() -> Any:
    """The byte tokenizer in ``tokenizers``' format: byte ``b`` is token ``b`` (as the
    printable character GPT-2's byte-level scheme maps it to), EOS is 256."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ModuleNotFoundError as error:  # the [train] extra
        raise missing_extra(error, "train") from error

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's own characters
    others = [b for b in range(256) if b not in printable]
    char = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    vocab = {char[b]: b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(BYTE_EOS, special=True)])  # id 256
    return tokenizer
