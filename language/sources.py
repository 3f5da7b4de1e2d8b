"""Text corpora turned into webdataset samples: local text / jsonl files and the embedded corpus.

The embedded corpus is the English help texts every CPython ships (``pydoc_data.topics``,
~465 KB in 79 topics), split into paragraphs as documents; every 10th topic is validation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenformer_mm.shards import cached_shards, write_shards

PYDOC_VAL_EVERY = 10


def text_file_samples(paths: Iterable[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """``.txt`` files as one document each; ``.jsonl`` files as one document per line."""
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                for i, line in enumerate(f):
                    if line.strip():
                        yield {"__key__": f"{path.stem}-{i:08d}", "json": line.strip()}
        else:
            yield {"__key__": path.stem, "txt": path.read_bytes()}


def pydoc_documents(split: str) -> Iterator[tuple[str, str]]:
    """(key, paragraph) of the CPython help topics of a split (``train`` or ``val``)."""
    from pydoc_data.topics import topics

    if split not in ("train", "val"):
        raise ValueError(f"pydoc split must be 'train' or 'val', got {split!r}")
    for index, name in enumerate(sorted(topics)):
        if (index % PYDOC_VAL_EVERY == 0) != (split == "val"):
            continue
        paragraphs = [p.strip() for p in topics[name].split("\n\n") if p.strip()]
        for i, paragraph in enumerate(paragraphs):
            yield f"{name}-{i:04d}", paragraph


def pydoc_samples(split: str) -> Iterator[dict[str, Any]]:
    for key, text in pydoc_documents(split):
        yield {"__key__": key, "json": json.dumps({"text": text}).encode()}


def write_pydoc_shards(out_dir: str | os.PathLike, samples_per_shard: int = 500) -> Path:
    for split in ("train", "val"):
        write_shards(pydoc_samples(split), out_dir, split, samples_per_shard, "pydoc")
    return Path(out_dir)


def ensure_pydoc_shards(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded corpus shards in the cache directory, built on first use."""
    return cached_shards("pydoc", write_pydoc_shards, cache_dir)
