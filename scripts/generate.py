"""Sample text from a language Tokenformer: a run of ours or a released official checkpoint.

    python scripts/generate.py runs/language/2026-11-22_11-00-00 --prompt "The for statement"
    python scripts/generate.py TokenFormer-150M/pytorch_model.bin --official \
        --tokenizer gpt-neox-20b/tokenizer.json --prompt "The meaning of life is" --top-p 0.9
"""

from __future__ import annotations

import argparse
import logging

import torch
from tqdm import tqdm

from tokenformer_mm.language import check_tokenizer_fits, load_official, load_tokenizer
from tokenformer_mm.train import load_run


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("path", help="a run directory / checkpoint, or an official checkpoint file")
    parser.add_argument("--official", action="store_true", help="path is an official checkpoint")
    parser.add_argument("--tokenizer", help="'byte' or a tokenizer.json (default: the run's)")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.official:
        if not args.tokenizer:
            parser.error("--official needs --tokenizer (GPT-NeoX-20B's tokenizer.json)")
        model, tokenizer = load_official(args.path), load_tokenizer(args.tokenizer)
    else:
        _, task, model, _ = load_run(args.path)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else task.tokenizer
    check_tokenizer_fits(tokenizer, model.config.vocab_size, args.tokenizer or "the run's")
    model.to(args.device).eval()
    generator = torch.Generator(args.device).manual_seed(args.seed)
    prompt = [tokenizer.eos_id, *tokenizer.encode(args.prompt)]  # EOS: a document starts here
    samples = []
    for _ in tqdm(range(args.num_samples), desc="sampling", disable=args.num_samples == 1):
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
        print(text.replace(tokenizer.decode([tokenizer.eos_id]), ""), "\n" + "-" * 40)
    return samples


if __name__ == "__main__":
    main()
