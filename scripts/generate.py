"""Sample text from a language Tokenformer: a run of ours or a released official checkpoint.

    python scripts/generate.py runs/language/2026-11-22_11-00-00 --prompt "The for statement"
    python scripts/generate.py TokenFormer-150M/pytorch_model.bin --official \\
        --tokenizer gpt-neox-20b/tokenizer.json --prompt "The meaning of life is" --top-p 0.9
    python scripts/generate.py runs/language/... --temperature 0        # greedy: no randomness

Each sample continues the prompt one token at a time: the model's logits for the next token are
divided by --temperature, cut to the --top-k likeliest tokens, then to the smallest set of them
whose probability reaches --top-p, and one token is drawn from what is left. A sample ends after
--max-new-tokens tokens or at the end-of-text token. The samples go to stdout, each followed by
a line of dashes; the progress bar of several samples goes to stderr and is cleared first.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from tqdm import tqdm

from tokenformer_mm.language import (
    TokenformerLM,
    check_tokenizer_fits,
    load_official,
    load_tokenizer,
)
from tokenformer_mm.train import load_run


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a run directory / checkpoint, or an official checkpoint file")
    parser.add_argument("--official", action="store_true", help="path is an official checkpoint")
    parser.add_argument("--tokenizer", help="'byte' or a tokenizer.json (default: the run's)")
    parser.add_argument(
        "--prompt", default="", help="text to continue (default: none, a document's start)"
    )
    parser.add_argument(
        "--num-samples", type=int, default=1,
        help="how many samples to draw from the prompt, one after another (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--max-new-tokens", type=int, default=200,
        help="the most tokens a sample adds to the prompt (default: 200)",
    )  # fmt: skip
    parser.add_argument(
        "--temperature", type=float, default=0.8,
        help="divides the logits: below 1 the likeliest tokens gain, above 1 the choice "
        "flattens; 0 is greedy, always the likeliest token (default: 0.8)",
    )  # fmt: skip
    parser.add_argument(
        "--top-k", type=int,
        help="draw only among the k likeliest tokens (default: every token)",
    )  # fmt: skip
    parser.add_argument(
        "--top-p", type=float,
        help="nucleus sampling: draw only among the likeliest tokens whose probabilities "
        "together reach p, in (0, 1]; after --top-k (default: every token)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the sampling: the same seed, model and options give the same samples "
        "(default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model runs (default: cuda if available, else cpu)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")

    if args.official:
        if not args.tokenizer:
            parser.error("--official needs --tokenizer (GPT-NeoX-20B's tokenizer.json)")
        model, tokenizer = load_official(args.path), load_tokenizer(args.tokenizer)
    else:
        _, task, model, _ = load_run(args.path)
        if not isinstance(model, TokenformerLM):
            raise ValueError(
                f"generate needs a language run; {args.path} holds a {type(model).__name__}"
            )
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else task.tokenizer
    check_tokenizer_fits(tokenizer, model.config.vocab_size, args.tokenizer or "the run's")
    model.to(args.device).eval()
    generator = torch.Generator(args.device).manual_seed(args.seed)
    prompt = [tokenizer.eos_id, *tokenizer.encode(args.prompt)]  # EOS: a document starts here
    end_of_text = tokenizer.decode([tokenizer.eos_id])
    samples = []
    # On stderr, on a terminal only, and gone when done; tqdm.write clears it before a sample.
    bar = tqdm(
        total=args.num_samples, desc="sampling", leave=False,
        disable=True if args.num_samples == 1 else None,
    )  # fmt: skip
    with bar:
        for _ in range(args.num_samples):
            tokens = torch.tensor([prompt], device=args.device)
            out = model.generate(
                tokens,
                args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                stop_token=tokenizer.eos_id,
                generator=generator,
            )
            text = args.prompt + tokenizer.decode(out[0, len(prompt) :].tolist())
            samples.append(text)
            bar.write(f"{text.replace(end_of_text, '')}\n{'-' * 40}", file=sys.stdout)
            bar.update()
    return samples


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, IsADirectoryError) as error:  # one line, no traceback
        sys.exit(f"generate.py: error: {error}")
