"""Train a byte-level BPE tokenizer on local text files; writes a tokenizer.json.

    python scripts/train_tokenizer.py corpus/*.txt tokenizer.json --vocab-size 32000

The end-of-text token ``<|endoftext|>`` is id 0; load the result with
``tokenformer_mm.language.load_tokenizer("tokenizer.json")`` or ``data.tokenizer=tokenizer.json``.
"""

from __future__ import annotations

import argparse

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
    args = parser.parse_args(argv)
    if args.vocab_size <= 257:
        parser.error(f"--vocab-size must exceed the 256 bytes + end-of-text, got {args.vocab_size}")
    train_tokenizer(args.files, args.vocab_size, args.min_frequency).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
