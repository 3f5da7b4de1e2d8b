"""Writing webdataset shards plus the ``_info.json`` that records how many samples each holds."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .data import INFO_FILE
from .extras import missing_extra

try:
    import webdataset as wds
except ModuleNotFoundError as error:  # the [train] extra
    raise missing_extra(error, "train") from error

logger = logging.getLogger(__name__)


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    split: str,
    samples_per_shard: int = 1000,
    dataset_name: str = "",
    overwrite: bool = False,
) -> list[str]:
    """Write ``samples`` (dicts with ``__key__`` and one entry per file extension) as tar shards.

    Shards are named ``{split}-{index:06d}.tar``; the split's file names and per-shard counts are
    merged into ``out_dir/_info.json`` in the layout timm and the public imagenet-1k-wds use.
    Every shard is written under a temporary name; all are renamed once the last is complete,
    so an interrupted write leaves no ``{split}-*.tar`` to read (and its leftovers are removed by
    the next write). A folder that
    already holds shards of ``split`` is refused (old shards left beside new ones would be read
    by a ``{split}-*.tar`` pattern); ``overwrite=True`` replaces them once the new ones are all
    written: a write that fails, or finds no samples, leaves them as they were.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    old = existing_shards(out_dir, split, overwrite)
    names: list[str] = []
    lengths: list[int] = []
    writer = None
    try:
        for sample in samples:
            if writer is None:  # the folder is made, and a killed write's leftovers go, only now
                os.makedirs(out_dir, exist_ok=True)
                for path in Path(out_dir).glob(f"{split}-*.tar.tmp"):
                    path.unlink()
            if writer is None or lengths[-1] == samples_per_shard:
                if writer is not None:
                    writer.close()
                names.append(f"{split}-{len(names):06d}.tar")
                lengths.append(0)
                writer = wds.TarWriter(os.path.join(out_dir, names[-1] + ".tmp"))
            writer.write(sample)
            lengths[-1] += 1
        if writer is not None:
            writer.close()
    except BaseException:
        for name in names:
            Path(out_dir, name + ".tmp").unlink(missing_ok=True)
        raise
    if not names:
        raise ValueError(f"no samples to write as {split!r} shards to {out_dir}; check the input")
    for name in names:  # all at once, when all are written: never a partial split to read
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
    for path in old:  # the replaced split's shards beyond the new count
        if path.name not in names:
            path.unlink()
    _update_info(out_dir, split, names, lengths, dataset_name)
    return [os.path.join(out_dir, name) for name in names]


def existing_shards(out_dir: str | os.PathLike, split: str, overwrite: bool) -> list[Path]:
    """The ``split`` shards already in ``out_dir``; an error naming them unless ``overwrite``."""
    old = sorted(Path(out_dir).glob(f"{split}-*.tar"))
    if old and not overwrite:
        raise ValueError(
            f"{out_dir} already holds {len(old)} {split!r} shards ({old[0].name}, ...); choose "
            "an empty folder, or overwrite them (make_shards.py --overwrite)"
        )
    return old


def _update_info(
    out_dir: str | os.PathLike, split: str, names: list[str], lengths: list[int], dataset_name: str
) -> None:
    path = os.path.join(out_dir, INFO_FILE)
    info: dict[str, Any] = {"name": dataset_name, "splits": {}}
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
    info["splits"][split] = {
        "name": split,
        "num_samples": sum(lengths),
        "filenames": names,
        "shard_lengths": lengths,
    }
    with open(path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(path + ".tmp", path)


def default_cache_dir() -> Path:
    """``$TOKENFORMER_MM_CACHE``, else ``~/.cache/tokenformer_mm``."""
    return Path(os.environ.get("TOKENFORMER_MM_CACHE", Path.home() / ".cache" / "tokenformer_mm"))


def cached_shards(
    name: str, write: Callable[[Path], Any], cache_dir: str | os.PathLike | None = None
) -> Path:
    """``cache_dir/name``, built by ``write(directory)`` on first use.

    Built in a staging directory and renamed, so concurrent callers (DDP ranks, test workers)
    never see a half-written data set.
    """
    target = Path(cache_dir or default_cache_dir()) / name
    if (target / INFO_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    write(staging)
    try:
        staging.rename(target)
        logger.info("built the %s shards in %s", name, target)
    except OSError:  # another process finished first
        shutil.rmtree(staging)
    return target


def run_shards(data: Any, embedded: Mapping[str, Callable[[], Path]]) -> tuple[str, str]:
    """(train, val) shard patterns of a run's ``data`` config.

    Both patterns when given; else, for an embedded data set (``embedded`` maps its
    ``data.name`` to the function that builds its shards on first use), its shards; else an
    error naming what is missing.
    """
    if data.train_shards and data.val_shards:
        return data.train_shards, data.val_shards
    if data.train_shards or data.val_shards:  # one given: never fall back to an embedded set
        given, missing = (
            ("train_shards", "val_shards") if data.train_shards else ("val_shards", "train_shards")
        )
        raise ValueError(
            f"data.{given}={data[given]!r} is set but data.{missing} is not: give both shard "
            f"patterns (a run never mixes your shards with the embedded {data.name!r} set)"
        )
    if data.name not in embedded:
        raise ValueError(
            f"data={data.name} needs data.train_shards and data.val_shards (shard patterns such "
            "as '/data/imagenet1k-train-{0000..1023}.tar'; quote braces in Hydra overrides), "
            f"or name an embedded data set: {sorted(embedded)}"
        )
    root = embedded[data.name]()
    return str(root / "train-*.tar"), str(root / "val-*.tar")
