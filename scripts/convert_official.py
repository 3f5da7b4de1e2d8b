"""Convert a released official TokenFormer checkpoint to this library's Hugging Face layout.

    python scripts/convert_official.py TokenFormer-150M/ tokenformer-150m-hf/
    python scripts/convert_official.py pytorch_model.bin out/ --num-heads 12 \\
        --tokenizer gpt-neox-20b/tokenizer.json

SRC is an official checkpoint file (``pytorch_model.bin`` or ``.safetensors``, GPT-NeoX's
sequential keys) or the folder the authors publish on the Hub (``pytorch_model.bin``, its
``config.json``, GPT-NeoX-20B's ``tokenizer.json`` when present). Sizes come from the weights;
heads from ``--num-heads``, else the folder's ``config.json``, else the official table. OUT is
then a directory that ``TokenformerLM.from_pretrained``, ``AutoModelForCausalLM`` (after ``import
tokenformer_mm.language.hf``) and ``AutoTokenizer`` load; it must be new or empty. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenformer_mm.language import HFTokenizer, check_tokenizer_fits, load_official

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
HEADS_KEYS = ("num_attention_heads", "num-attention-heads")


def checkpoint_file(source: Path) -> Path:
    """The weights file of SRC: itself, or the one in the folder."""
    if source.is_file():
        return source
    found = [source / name for name in WEIGHT_FILES if (source / name).is_file()]
    if not source.is_dir() or not found:
        raise ValueError(
            f"{source} is neither an official checkpoint file nor a folder holding one of "
            f"{WEIGHT_FILES}"
        )
    return found[0]


def saved_heads(source: Path) -> int | None:
    """The head count the folder's ``config.json`` records, if it records one."""
    config = source / "config.json" if source.is_dir() else None
    if config is None or not config.is_file():
        return None
    saved = json.loads(config.read_text())
    return next((int(saved[key]) for key in HEADS_KEYS if key in saved), None)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="an official checkpoint file or Hub folder")
    parser.add_argument("output", type=Path, help="a new (or empty) folder to write")
    parser.add_argument("--num-heads", type=int, help="heads, where the weights cannot say")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: SRC's, if any)")
    parser.add_argument("--context-length", type=int, default=2048)
    args = parser.parse_args(argv)
    if args.context_length < 1:
        parser.error(f"--context-length must be >= 1, got {args.context_length}")
    if args.num_heads is not None and args.num_heads < 1:
        parser.error(f"--num-heads must be >= 1, got {args.num_heads}")
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"{args.output} is a file; the output is a new (or empty) folder")
    if args.output.exists() and any(args.output.iterdir()):
        parser.error(f"{args.output} is not empty; choose a new folder or empty it")
    try:
        weights = checkpoint_file(args.source)
        heads = args.num_heads if args.num_heads is not None else saved_heads(args.source)
        model = load_official(weights, num_heads=heads, context_length=args.context_length)
        tokenizer_file = args.tokenizer or (
            args.source / "tokenizer.json" if args.source.is_dir() else None
        )
        tokenizer = None
        if tokenizer_file is not None and tokenizer_file.is_file():
            tokenizer = HFTokenizer(tokenizer_file)
            check_tokenizer_fits(tokenizer, model.config.vocab_size, str(tokenizer_file))
        elif args.tokenizer is not None:
            parser.error(f"--tokenizer {args.tokenizer} is not a file")
    except ValueError as error:
        parser.error(str(error))
    model.save_pretrained(args.output, tokenizer=tokenizer)
    print(f"{weights} -> {args.output} ({'with' if tokenizer else 'without'} a tokenizer)")
    return args.output


if __name__ == "__main__":
    main()
