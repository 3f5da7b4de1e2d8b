"""Run another project's script with every Tokenformer model registered.

timm and open_clip look models up in registries that only an import fills, and their own
scripts (timm's ``train.py``, ``validate.py``; ``open_clip_train.main``) never import this
package. This runs them unchanged after registering the ``tokenformer_*`` timm models, the
``TokenformerCLIP-*`` open_clip configs and, with the ``[hf]`` extra, ``model_type
"tokenformer"`` with transformers' Auto classes (which lm-evaluation-harness's ``hf`` model
loads through)::

    python -m tokenformer_mm pytorch-image-models/train.py --model tokenformer_micro_patch4_32 ...
    python -m tokenformer_mm -m open_clip_train.main --model TokenformerCLIP-micro ...
    python -m tokenformer_mm -m lm_eval --model hf --model_args pretrained=DIR --tasks piqa

A script path runs as ``python SCRIPT`` would (its folder first on ``sys.path``), ``-m MODULE``
as ``python -m MODULE`` would.
"""

from __future__ import annotations

import itertools
import logging
import runpy
import sys
from pathlib import Path

logger = logging.getLogger("tokenformer_mm")

USAGE = "usage: python -m tokenformer_mm SCRIPT [ARGS ...] | -m MODULE [ARGS ...]"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(f"{USAGE}\n\n{__doc__}")
        raise SystemExit(0 if argv else 2)
    if argv[0] == "-m" and len(argv) < 2:
        raise SystemExit(f"-m needs a module name, e.g. -m open_clip_train.main\n{USAGE}")
    if argv[0] != "-m" and not Path(argv[0]).is_file():
        raise SystemExit(f"no script at {argv[0]!r}: give the path of a Python file, or -m MODULE")

    import tokenformer_mm.clip  # noqa: F401  (registers the timm models and the open_clip configs)

    register_transformers()

    warn_unclipped_clip(argv)
    warn_unmet_open_clip_train_requirements(argv)

    if argv[0] == "-m":
        sys.argv = argv[1:]  # run_module puts the module's file name in sys.argv[0]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        script = Path(argv[0])
        sys.argv = argv
        sys.path.insert(0, str(script.resolve().parent))
        runpy.run_path(str(script), run_name="__main__")


def register_transformers() -> None:
    """The language tower's Auto classes, where transformers is installed (the [hf] extra)."""
    try:
        import tokenformer_mm.language.hf  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "transformers":
            raise


def warn_unclipped_clip(argv: list[str]) -> None:
    """open_clip's trainer clips no gradient by default, and a model config cannot change that:
    say so when it trains a Tokenformer CLIP, which collapses without clipping in some seeds."""
    if argv[:2] != ["-m", "open_clip_train.main"] or any(
        arg.startswith("--grad-clip-norm") for arg in argv
    ):
        return
    models = [value for flag, value in itertools.pairwise(argv) if flag == "--model"]
    models += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--model=")]
    if any("TokenformerCLIP" in model for model in models):
        message = (
            "training %s under open_clip's trainer without --grad-clip-norm: measured at lr 2e-3, "
            "1 of 4 seeds (2 of 3 in a second run) collapse to one embedding, at lr 1e-3 1 of 4 "
            "stalls near chance; with "
            "--grad-clip-norm 1.0 none did (docs/recipes.md, Recipes). Add --grad-clip-norm 1.0"
        )
        logging.basicConfig()
        logger.warning(message, ", ".join(models))


def warn_unmet_open_clip_train_requirements(argv: list[str]) -> None:
    """open_clip's trainer needs what open_clip_torch's ``training`` extra pins (webdataset
    <= 0.2.86: newer ones end each shard with a marker its loader does not expect); a run on
    another version fails at its first batch with an error that does not say so."""
    if argv[:2] != ["-m", "open_clip_train.main"]:
        return
    from .extras import unmet_requirements

    unmet = unmet_requirements("open_clip_torch", "training")
    if unmet:
        logging.basicConfig()
        logger.warning(
            "open_clip's trainer runs here with versions outside its pins: %s (on webdataset "
            "> 0.2.86 its loader fails at the first batch with KeyError: 'fname'). Install "
            "them: pip install 'open_clip_torch[training]'",
            "; ".join(unmet),
        )


if __name__ == "__main__":
    main()
