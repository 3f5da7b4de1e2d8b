"""Text corpora turned into webdataset samples: local text / jsonl files and two embedded corpora.

Both ship with every CPython, so nothing is downloaded:

- ``pydoc``: the English help texts (``pydoc_data.topics``, ~465 KB in 79 topics), split into
  paragraphs as documents; every 10th topic is validation. Small: a few hundred steps read it
  many times over.
- ``stdlib``: the standard library's own source, one ``.py`` file per document (~12 MB in ~730
  files without the test suites, ~31 MB with them), in sorted path order; every 50th file is
  validation. Large enough that a growth study reads each token at most once.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenformer_mm.shards import cached_shards, write_shards

PYDOC_VAL_EVERY = 10
STDLIB_VAL_EVERY = 50
# Folders of the standard library's own test suites (left out unless asked for).
STDLIB_TEST_FOLDERS = frozenset({"test", "tests", "idle_test"})


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

    _check_split("pydoc", split)
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


def _check_split(corpus: str, split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"{corpus} split must be 'train' or 'val', got {split!r}")


def stdlib_files(include_tests: bool = False) -> list[Path]:
    """The standard library's ``.py`` files in sorted (POSIX) path order, site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        parts = set(path.relative_to(root).parts[:-1])
        if "site-packages" in parts or "__pycache__" in parts:
            continue
        if not include_tests and parts & STDLIB_TEST_FOLDERS:
            continue
        files.append(path)
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library folder {root}")
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def stdlib_documents(split: str, include_tests: bool = False) -> Iterator[tuple[str, str]]:
    """(key, source) of the standard library files of a split; every 50th file is validation.

    Undecodable bytes (a few files are not UTF-8) become U+FFFD rather than dropping the file.
    """
    _check_split("stdlib", split)
    root = Path(sysconfig.get_paths()["stdlib"])
    for index, path in enumerate(stdlib_files(include_tests)):
        if (index % STDLIB_VAL_EVERY == 0) != (split == "val"):
            continue
        key = path.relative_to(root).with_suffix("").as_posix().replace("/", "__")
        yield key.replace(".", "_"), path.read_bytes().decode("utf-8", errors="replace")


def write_stdlib_shards(out_dir: str | os.PathLike, samples_per_shard: int = 100) -> Path:
    for split in ("train", "val"):
        samples = (
            {"__key__": key, "json": json.dumps({"text": text}).encode()}
            for key, text in stdlib_documents(split)
        )
        write_shards(samples, out_dir, split, samples_per_shard, "stdlib")
    return Path(out_dir)


def ensure_stdlib_shards(cache_dir: str | os.PathLike | None = None) -> Path:
    """The standard-library corpus shards in the cache directory, built on first use."""
    return cached_shards("stdlib", write_stdlib_shards, cache_dir)


# The embedded corpora by ``data.name``: built on first use when no shards are given.
EMBEDDED_CORPORA = {"pydoc": ensure_pydoc_shards, "stdlib": ensure_stdlib_shards}
