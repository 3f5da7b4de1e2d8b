"""Train a byte-level BPE tokenizer on local text files; writes a tokenizer.json.

    python scripts/train_tokenizer.py corpus/*.txt tokenizer.json --vocab-size 32000

The end-of-text token ``<|endoftext|>`` is id 0; load the result with
``tokenformer_mm.language.load_tokenizer("tokenizer.json")`` or ``data.tokenizer=tokenizer.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_tokenizer(files: list[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train(files, trainer)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", help="text files to learn from")
    parser.add_argument("output", help="where to write tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    if args.vocab_size <= 257:
        parser.error(f"--vocab-size must exceed the 256 bytes + end-of-text, got {args.vocab_size}")
    if args.min_frequency < 0:
        parser.error(f"--min-frequency must be >= 0, got {args.min_frequency}")
    missing = [name for name in args.files if not Path(name).is_file()]
    if missing:
        parser.error(f"no such text file: {', '.join(missing)}")
    output = Path(args.output)
    if output.is_dir():
        parser.error(
            f"{output} is a directory; name the file to write (e.g. {output}/tokenizer.json)"
        )
    if output.exists() and not args.overwrite:
        parser.error(f"{output} exists; pass --overwrite to replace it, or choose another name")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    train_tokenizer(args.files, args.vocab_size, args.min_frequency).save(str(partial))
    partial.replace(output)  # the whole file or none
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
