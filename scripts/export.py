"""Write a checkpoint's model weights as one ``model.safetensors`` for inference.

    python scripts/export.py runs/language/<run>/checkpoints/step_00004000 model.safetensors
    python scripts/export.py runs/language/<run> model.safetensors     # its newest checkpoint

A sharded checkpoint (``train.parallel=fsdp``: every rank's ``sharded/`` files) is gathered in
this one process; a full one is copied. The file loads with timm's
``pretrained_cfg_overlay=dict(file=...)``, open_clip's ``pretrained=`` and
``tokenformer_mm.train.checkpoint.load_model`` (which resizes a model built at its initial size
to a grown checkpoint's token counts). An existing output file is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenformer_mm.train import checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a checkpoint directory or a run directory")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    source = args.source
    if not (source / checkpoint.STATE_FILE).is_file():
        newest = checkpoint.latest(source / "checkpoints")
        if newest is None:
            parser.error(f"{source} is neither a checkpoint nor a run directory with checkpoints")
        source = newest
    try:
        written = checkpoint.export(source, args.output)
    except ValueError as error:
        parser.error(str(error))
    print(f"{source} -> {written}")


if __name__ == "__main__":
    main()
