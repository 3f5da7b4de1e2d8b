"""Benchmarks of tokenformer-mm; each prints a table and appends it to docs/benchmarks.md.

    python scripts/bench.py pattention    # fused vs plain vs official vs the matmul-only bound
    python scripts/bench.py vision        # tokenformer_* vs timm vit_* of equal FLOPs / params
    python scripts/bench.py language      # vs a nanoGPT-style GPT; generation with/without cache
    python scripts/bench.py data          # image and text pipelines, samples/s
    python scripts/bench.py clip-eval     # CLIP retrieval metrics of 50,000 pairs: peak memory
    python scripts/bench.py recipe        # one generic recipe: Tokenformer inits vs matched ViT
    python scripts/bench.py timm-train --train-py ../pytorch-image-models/train.py
                                          # the same comparison under timm's own train.py
    python scripts/bench.py clip-train    # CLIP towers under open_clip's own trainer
    python scripts/bench.py lm-recipe     # LM key inits vs the GPT at equal FLOPs
    python scripts/bench.py shard-memory  # bytes per rank, DDP vs FSDP2, 450M LM on 2 ranks

Every entry records the command line, machine, torch version and date, so a figure can always be
reproduced. On a CUDA machine the same commands measure GPU figures.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def record(
    title: str, rows: list[dict[str, object]], notes: str = "", report: Path = REPORT
) -> None:
    """Print a markdown table and append it, with how it was made, to ``report``."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    table = "\n".join(lines)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    entry = (
        f"\n## {title}\n\n"
        f"- command: `{command}`\n- machine: {machine()}\n"
        f"- date: {datetime.date.today().isoformat()}\n\n{table}\n"
        + (f"\n{notes}\n" if notes else "")
    )
    print(entry)
    report.parent.mkdir(parents=True, exist_ok=True)
    if not report.exists():
        report.write_text("# Benchmarks\n\nMeasured by `scripts/bench.py`; newest entries last.\n")
    with report.open("a") as f:
        f.write(entry)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each variant's call, the variants run in turn (rotating the order).

    Interleaving makes a noisy, shared machine slow every variant alike, so their ratios hold.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: float(np.median(times)) for name, times in seconds.items()}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mixed_precision(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, as training there runs; fp32 on CPU."""
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


def precision_note(device: torch.device) -> str:
    return "bf16 autocast" if device.type == "cuda" else "fp32"


def adamw_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training step (backward and an AdamW update): the unit the model benchmarks time."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def millions_of_params(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``BxTxDxN`` or ``BxTxDxNxM`` (M layers sharing the input, like q/k/v) -> (B, T, D, N, M)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (4, 5) or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: expected BxTxDxN or BxTxDxNxM with positive ints, e.g. 8x197x384x384"
        )
    return (*values, 1)[:5]  # type: ignore[return-value]


# The issue's shapes (ViT-S attention and FFN, a GPT-base FFN), then ViT-B/16's at batch 8.
PATTENTION_SHAPES = (
    "8x197x384x384",
    "8x197x384x1536",
    "8x256x768x3072",
    "8x197x768x768",
    "8x197x768x3072",
    "8x197x768x768x3",
)


def pattention_case(
    shape: tuple[int, int, int, int, int], args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds per fwd+bwd and bytes saved for backward of each variant at one shape."""
    sys.path.insert(0, str(ROOT))  # the references live beside the tests
    from tests.reference import official_pattention, saved_activation_bytes
    from tokenformer_mm.pattention import Pattention, pattention_group

    B, T, d, n, m = shape
    torch.manual_seed(0)
    layers = [Pattention(d, d, n, norm=args.norm, device=device) for _ in range(m)]
    params = [p for layer in layers for p in layer.parameters()]
    x = torch.randn(B, T, d, device=device, requires_grad=True)
    grads = [torch.randn(B, T, d, device=device) for _ in layers]
    autocast = mixed_precision(device)

    def on_path(fused: bool) -> Callable[[], list[torch.Tensor]]:
        def forward() -> list[torch.Tensor]:
            for layer in layers:
                layer.fused = fused
            return pattention_group(layers, x)

        return forward

    forwards: dict[str, Callable[[], list[torch.Tensor]]] = {
        "matmul-only bound": lambda: [(x @ p.key_tokens.t()) @ p.value_tokens for p in layers],
        "fused": on_path(True),
        "plain": on_path(False),
        "official": lambda: [
            official_pattention(x, p.key_tokens, p.value_tokens, args.norm) for p in layers
        ],
    }

    def train_step(forward: Callable[[], list[torch.Tensor]]) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            for p in params:
                p.grad = None
            with autocast:
                outputs = forward()
            torch.autograd.backward(outputs, grads)

        return step

    seconds = interleaved_seconds(
        {name: train_step(f) for name, f in forwards.items()}, args.repeats, device
    )
    saved = {}
    for name, forward in forwards.items():
        with autocast:
            saved[name] = saved_activation_bytes(forward, exclude=params)
    return seconds, saved


def bench_pattention(args: argparse.Namespace) -> None:
    device = default_device()
    rows, ratios = [], []
    for shape in args.shapes:
        B, T, d, n, m = shape
        seconds, saved = pattention_case(shape, args, device)
        bound = seconds["matmul-only bound"]
        ratios.append(seconds["fused"] / bound)
        for name in seconds:
            rows.append(
                {
                    "shape": f"B{B}·T{T} d{d} n{n}" + (f" ×{m} (q/k/v group)" if m > 1 else ""),
                    "variant": name,
                    "fwd+bwd ms": f"{seconds[name] * 1e3:.2f}",
                    "× bound": f"{seconds[name] / bound:.3f}",
                    "saved for backward (MiB)": f"{saved[name] / 2**20:.2f}",
                    "× official": f"{saved[name] / saved['official']:.2f}",
                }
            )
    met = sum(ratio <= 1.10 for ratio in ratios)
    record(
        f"Pattention fwd+bwd ({args.norm}, {device.type})",
        rows,
        notes=(
            f"Medians of {args.repeats} interleaved runs per variant; "
            + precision_note(device)
            + ". 'saved for backward' = bytes autograd keeps between forward and backward "
            "(saved_tensors_hooks; parameters excluded, the input x included). The fused path is "
            f"within 1.10x of the matmul-only bound at {met} of {len(ratios)} shapes."
        ),
        report=args.report,
    )


# timm's ViT of the same width whose FLOPs and parameters match a Tokenformer of n = d tokens
# (q/k/v/proj) and 4d (FFN): per block and token both have 32·d² FLOPs and 16·d² parameters
# when the MLP is 6d wide (8d² + 4·6·d²); depth, width, heads and attention are then identical.
MATCHED_MLP_RATIO = 6.0
VIT_OF_WIDTH = {
    192: "vit_tiny_patch16_224",
    384: "vit_small_patch16_224",
    768: "vit_base_patch16_224",
    1024: "vit_large_patch16_224",
}


def bench_vision(args: argparse.Namespace) -> None:
    import timm

    import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models)
    from tokenformer_mm.flops import training_flops

    device = default_device()
    ours = timm.create_model(args.model)
    width = ours.num_features
    if width not in VIT_OF_WIDTH:
        raise ValueError(f"no timm ViT of width {width}; benchmark one of {sorted(VIT_OF_WIDTH)}")
    vit = VIT_OF_WIDTH[width]
    models = {
        args.model: ours,
        f"{vit}, mlp_ratio {MATCHED_MLP_RATIO:g} (equal FLOPs and params)": timm.create_model(
            vit, mlp_ratio=MATCHED_MLP_RATIO
        ),
        f"{vit} (reference)": timm.create_model(vit),
    }
    size = ours.pretrained_cfg["input_size"][-1]
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = mixed_precision(device)
    steps, inference, flops = {}, {}, {}
    for name, model in models.items():
        model.to(device)

        def loss(model: torch.nn.Module = model, batch: slice = slice(None)) -> torch.Tensor:
            with autocast:
                logits = model(images[batch])
            return torch.nn.functional.cross_entropy(logits.float(), labels[batch])

        flops[name] = training_flops(model, lambda m=model: loss(m, slice(0, 2))) / 2  # per image

        @torch.no_grad()
        def infer(model: torch.nn.Module = model) -> None:
            with autocast:
                model.eval()(images)
            model.train()

        steps[name] = adamw_step(model, lambda m=model: loss(m))
        inference[name] = infer
    train_s = interleaved_seconds(steps, args.repeats, device)
    infer_s = interleaved_seconds(inference, args.repeats, device)
    matched = list(models)[1]
    per_flop = {name: train_s[name] / (flops[name] * args.batch_size) for name in models}
    rows = [
        {
            "model": name,
            "params (M)": millions_of_params(model),
            "train GFLOPs / image": f"{flops[name] / 1e9:.2f}",
            "train step (ms)": f"{train_s[name] * 1e3:.0f}",
            "train ms / image": f"{train_s[name] * 1e3 / args.batch_size:.1f}",
            "time per FLOP vs matched ViT": f"{per_flop[name] / per_flop[matched]:.2f}x",
            "inference images/s": f"{args.batch_size / infer_s[name]:.0f}",
        }
        for name, model in models.items()
    ]
    record(
        f"Vision: {args.model} vs timm ViT ({device.type})",
        rows,
        notes=(
            f"Batch {args.batch_size} at {size}², AdamW step included, medians of {args.repeats} "
            "interleaved steps; "
            + precision_note(device)
            + ". FLOPs: FlopCounterMode on one fwd+bwd, attention by one convention "
            "(tokenformer_mm.flops)."
        ),
        report=args.report,
    )


def throughput(batches: Iterable, count: Callable[[object], int], warmup: int) -> float:
    """Items per second over ``batches``, after ``warmup`` batches (worker start-up excluded)."""
    seen, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            start, seen = time.perf_counter(), 0
        seen += count(batch)
    if start is None:
        raise ValueError(f"only {i + 1} batches, fewer than the {warmup} warm-up batches")
    return seen / (time.perf_counter() - start)


def photo_folder(root: Path, num_images: int, num_classes: int = 8, seed: int = 0) -> Path:
    """An ImageFolder of real JPEG photos at ImageNet-like sizes (~500x375, quality 90).

    They are random crops, flips and rescales of the two photographs scikit-learn ships, so the
    benchmark decodes real photographic JPEG content without downloading a data set.
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    for i in tqdm(range(num_images), desc="writing JPEGs", unit="img"):
        image = photos[i % len(photos)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        out_w = int(rng.integers(400, 640))
        crop = image.crop((x, y, x + cw, y + ch)).resize((out_w, int(out_w * 0.75)), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / f"class{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench_image_data(args: argparse.Namespace) -> None:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from tokenformer_mm.shards import write_shards
    from tokenformer_mm.vision.data import image_train_loader
    from tokenformer_mm.vision.sources import imagefolder_samples

    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "folder", args.images)
        write_shards(imagefolder_samples(folder), Path(tmp) / "shards", "train", 128)
        shards = str(Path(tmp) / "shards" / "train-*.tar")

        def ours() -> float:
            loader = image_train_loader(shards, args.batch_size, args.img_size, args.workers)
            return throughput(
                (b for _ in range(args.epochs) for b in loader), lambda b: len(b["label"]), 1
            )

        def torchvision_folder() -> float:
            transform = T.Compose(
                [
                    T.RandomResizedCrop(args.img_size, interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                ]
            )
            loader = DataLoader(
                ImageFolder(str(folder), transform),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                drop_last=True,
                persistent_workers=True,
            )
            return throughput(
                (b for _ in range(args.epochs) for b in loader), lambda b: len(b[1]), 1
            )

        rates: dict[str, list[float]] = {"ours": [], "torchvision": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            rates["ours"].append(ours())
            rates["torchvision"].append(torchvision_folder())
    median = {k: float(np.median(v)) for k, v in rates.items()}
    record(
        f"Image loader throughput ({args.img_size}², {args.workers} workers)",
        [
            {
                "pipeline": "tokenformer-mm webdataset (uint8 out; normalise/flip on device)",
                "images/s (median)": f"{median['ours']:.0f}",
                "runs": ", ".join(f"{r:.0f}" for r in rates["ours"]),
            },
            {
                "pipeline": "torchvision ImageFolder + RandomResizedCrop/flip/ToTensor/Normalize",
                "images/s (median)": f"{median['torchvision']:.0f}",
                "runs": ", ".join(f"{r:.0f}" for r in rates["torchvision"]),
            },
        ],
        notes=(
            f"{args.images} real JPEG photos (~500x375, q90), batch {args.batch_size}, "
            f"{args.epochs} epochs per run after one warm-up batch, "
            f"{args.repeats} interleaved runs. "
            f"Speed-up: {median['ours'] / median['torchvision']:.2f}x."
        ),
        report=args.report,
    )


def bench_text_data(args: argparse.Namespace) -> None:
    from tokenformer_mm.language.data import text_train_loader
    from tokenformer_mm.language.sources import write_pydoc_shards
    from tokenformer_mm.language.tokenizer import ByteTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_pydoc_shards(tmp)
        shards = str(Path(tmp) / "train-*.tar")
        rates = []
        for _ in range(args.repeats):
            loader = text_train_loader(
                shards, ByteTokenizer(), args.batch_size, args.seq_len, args.workers
            )
            rates.append(
                throughput(
                    (b for _ in range(args.epochs) for b in loader),
                    lambda b: int(b["length"].sum()),
                    1,
                )
            )
    median = float(np.median(rates))
    record(
        f"Text loader throughput (byte tokenizer, {args.workers} workers)",
        [
            {
                "pipeline": "tokenformer-mm webdataset: decode, tokenize, pack, shuffle",
                "tokens/s (median)": f"{median:,.0f}",
                "sequences/s": f"{median / args.seq_len:,.0f}",
                "runs (tokens/s)": ", ".join(f"{r:,.0f}" for r in rates),
            }
        ],
        notes=(
            f"The embedded CPython-docs corpus, sequences of {args.seq_len} + 1 tokens, batch "
            f"{args.batch_size}, {args.epochs} epochs per run after one warm-up batch."
        ),
        report=args.report,
    )


def bench_data(args: argparse.Namespace) -> None:
    bench_image_data(args)
    bench_text_data(args)


class GPTBlock(torch.nn.Module):
    """A nanoGPT block: LayerNorm, causal self-attention (SDPA), LayerNorm, GELU MLP; no biases."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = torch.nn.LayerNorm(dim, bias=False)
        self.c_attn = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.c_proj = torch.nn.Linear(dim, dim, bias=False)
        self.ln_2 = torch.nn.LayerNorm(dim, bias=False)
        hidden = int(mlp_ratio * dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden, bias=False),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v)
        )
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class GPT(torch.nn.Module):
    """nanoGPT's model in brief: learned positions, blocks, final LayerNorm, tied logits.

    With ``mlp_ratio=6`` it has the FLOPs and parameters of a Tokenformer of the same width and
    depth with n = d tokens (q/k/v/proj) and 4d (FFN): see ``MATCHED_MLP_RATIO``.
    """

    def __init__(
        self, vocab: int, context: int, dim: int, depth: int, heads: int, mlp_ratio: float
    ):
        super().__init__()
        self.context = context
        self.wte = torch.nn.Embedding(vocab, dim)
        self.wpe = torch.nn.Embedding(context, dim)
        self.blocks = torch.nn.ModuleList(GPTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.ln_f = torch.nn.LayerNorm(dim, bias=False)
        for name, p in self.named_parameters():  # nanoGPT's init (N(0, 1) logits would saturate)
            if p.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * depth)
                    if name.endswith(("c_proj.weight", "2.weight"))
                    else 0.02
                )
                torch.nn.init.normal_(p, std=std)

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nanoGPT's (logits, loss): every position's logits with targets, else the last's."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x) if targets is not None else self.ln_f(x[:, -1:])
        logits = torch.nn.functional.linear(x, self.wte.weight)
        if targets is None:
            return logits, None
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, top_k: int) -> torch.Tensor:
        """nanoGPT's sampling loop: the whole (cropped) context again for every new token."""
        from tokenformer_mm.language.model import sample_next

        for _ in range(max_new_tokens):
            logits, _ = self(tokens[:, -self.context :])
            tokens = torch.cat([tokens, sample_next(logits[:, -1], 1.0, top_k, None)[:, None]], 1)
        return tokens


def bench_language(args: argparse.Namespace) -> None:
    from tokenformer_mm.flops import training_flops
    from tokenformer_mm.language import TokenformerLM, lm_config

    device = default_device()
    config = lm_config(args.model, context_length=args.seq_len + args.new_tokens + 16)
    if (
        not config.qkv_tokens == config.proj_tokens == config.dim
        or config.ffn_tokens != 4 * config.dim
    ):
        raise ValueError(
            f"the matched GPT assumes n = dim (q/k/v/proj) and 4 x dim (FFN) tokens; config "
            f"{args.model!r} has {config.qkv_tokens}/{config.proj_tokens}/{config.ffn_tokens} "
            f"at dim {config.dim}: pick one of the official-shaped configs (small, 150M, ...)"
        )
    models = {
        f"Tokenformer {args.model}": TokenformerLM(config),
        f"nanoGPT-style GPT, mlp_ratio {MATCHED_MLP_RATIO:g} (equal FLOPs; equal params "
        "but for its position table)": GPT(
            config.vocab_size,
            config.context_length,
            config.dim,
            config.depth,
            config.num_heads,
            MATCHED_MLP_RATIO,
        ),
    }
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    autocast = mixed_precision(device)
    steps, flops = {}, {}
    for name, model in models.items():
        model.to(device)

        def loss(model: torch.nn.Module = model, batch: slice = slice(None)) -> torch.Tensor:
            with autocast:  # both models: nanoGPT's forward(idx, targets) -> (logits, loss)
                return model(tokens[batch, :-1], tokens[batch, 1:])[1]

        flops[name] = training_flops(model, lambda m=model: loss(m, slice(0, 1)))
        steps[name] = adamw_step(model, lambda m=model: loss(m))
    seconds = interleaved_seconds(steps, args.repeats, device)
    step_tokens = args.batch_size * args.seq_len
    ours, gpt = list(models)
    per_flop = {name: seconds[name] / flops[name] for name in models}
    rows = [
        {
            "model": name,
            "params (M)": millions_of_params(model),
            "measure": f"training, batch {args.batch_size} x {args.seq_len}",
            "tokens/s": f"{step_tokens / seconds[name]:,.0f}",
            "time per FLOP vs GPT": f"{per_flop[name] / per_flop[gpt]:.2f}x",
        }
        for name, model in models.items()
    ]
    prompt = tokens[:1, :16]
    generation = {
        (ours, "KV cache on"): lambda: models[ours].generate(prompt, args.new_tokens, top_k=50),
        (ours, "KV cache off"): lambda: models[ours].generate(
            prompt, args.new_tokens, top_k=50, use_cache=False
        ),
        (gpt, "no cache (nanoGPT's loop)"): lambda: models[gpt].generate(
            prompt, args.new_tokens, top_k=50
        ),
    }
    with autocast:
        gen_seconds = interleaved_seconds(generation, 1, device, warmup=1)
    for (name, how), sec in gen_seconds.items():
        rows.append(
            {
                "model": name,
                "params (M)": "",
                "measure": f"generation of {args.new_tokens} tokens, {how}",
                "tokens/s": f"{args.new_tokens / sec:,.0f}",
                "time per FLOP vs GPT": "",
            }
        )
    record(
        f"Language: Tokenformer {args.model} vs a nanoGPT-style GPT ({device.type})",
        rows,
        notes=(
            f"Training: medians of {args.repeats} interleaved AdamW steps, "
            + precision_note(device)
            + "; FLOPs by FlopCounterMode, attention by one convention (tokenformer_mm.flops): "
            + ", ".join(
                f"{flops[n] / 1e9:.2f} GFLOPs per sequence for {n.split(',')[0]}" for n in models
            )
            + ". Generation: batch 1 from a 16-token prompt, top-k 50."
        ),
        report=args.report,
    )


def clip_eval_peak(pairs: int, chunked: bool, seed: int = 0) -> tuple[float, float, float]:
    """(seconds, peak RSS GiB, peak above the features GiB) of one CLIP evaluation's metrics.

    Runs in a fresh process (``clip_eval_memory`` spawns it), so the peak is this computation's:
    TokenformerCLIP-micro's feature width (128) and context (20), captions from 40 templates.
    """
    import resource

    import torch.nn.functional as F

    from tokenformer_mm.clip.metrics import clip_metrics

    def peak_gib() -> float:  # ru_maxrss is KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (pairs,), generator=generator)
    template = torch.randint(0, 4, (pairs,), generator=generator)
    tokens = torch.zeros(pairs, 20, dtype=torch.long)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, labels, template
    text = F.normalize(torch.randn(pairs, 128, generator=generator), dim=-1)
    image = F.normalize(text + torch.randn(pairs, 128, generator=generator), dim=-1)
    classes = F.normalize(torch.randn(10, 128, generator=generator), dim=-1)
    before = peak_gib()
    start = time.perf_counter()
    if chunked:
        clip_metrics(image, text, tokens, labels, classes, 100.0)
    else:  # what the evaluation did before: the whole N x N matrix and an N x N x T comparison
        logits = 100.0 * image @ text.T
        same_caption = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
        target = torch.arange(pairs)
        F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
        same_caption[target, logits.argmax(1)].float().mean()
    seconds = time.perf_counter() - start
    return seconds, peak_gib(), peak_gib() - before


def bench_clip_eval(args: argparse.Namespace) -> None:
    """Peak memory and time of the CLIP evaluation's metrics, each case in a fresh process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    cases = [(n, True) for n in args.pairs] + [(n, False) for n in args.full_matrix_pairs]
    rows = []
    for pairs, chunked in tqdm(cases, desc="clip-eval"):
        with context.Pool(1) as pool:
            seconds, peak, above = pool.apply(clip_eval_peak, (pairs, chunked))
        rows.append(
            {
                "pairs": f"{pairs:,}",
                "method": "chunked (clip_metrics)" if chunked else "whole N x N matrix",
                "seconds": f"{seconds:.2f}",
                "peak RSS GiB": f"{peak:.2f}",
                "above the features GiB": f"{above:.2f}",
            }
        )
    record(
        "CLIP evaluation metrics: memory at ImageNet-validation size",
        rows,
        notes=(
            "Random unit features of TokenformerCLIP-micro's width (128) and 20-token captions; "
            "each case in a fresh process (peak RSS includes torch itself). The whole-matrix way "
            "needs N² (4 + T) bytes: 60 GB at 50,000 pairs, so it is measured at smaller N only."
        ),
        report=args.report,
    )


def shard_memory_worker(args: argparse.Namespace) -> None:
    """One rank of ``shard-memory`` (under torchrun): one AdamW step of the LM, wrapped as the
    engine wraps it, then the bytes this rank holds, written to ``args.out/rank{r}.json``."""
    import json
    import resource

    import torch.distributed as dist

    from tokenformer_mm.distributed import setup_distributed
    from tokenformer_mm.language import TokenformerLM
    from tokenformer_mm.language.model import lm_config
    from tokenformer_mm.train import parallel
    from tokenformer_mm.train.config import OptimConfig
    from tokenformer_mm.train.optim import build_optimizer

    rank, world_size, device = setup_distributed("cpu")
    torch.manual_seed(0)
    if args.worker == "fsdp":  # deferred init: no rank ever holds the whole model
        with torch.device("meta"):
            model = TokenformerLM(lm_config(args.model))
        parallel.shard(model, device, world_size)
        model.to_empty(device=device)
        model.init_weights()
        module = model
    else:
        model = TokenformerLM(lm_config(args.model))
        module = parallel.replicate(model, device)
    optimizer, _ = build_optimizer(model, OptimConfig(), total_steps=10)
    tokens = torch.randint(0, model.config.vocab_size, (1, args.seq_len + 1))
    _, loss = module(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    optimizer.step()

    def held(tensors: Iterable[torch.Tensor]) -> int:  # a DTensor holds its local shard
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        return sum(t.numel() * t.element_size() for t in local)

    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    sizes = {
        "parameters": held(model.parameters()),
        "gradients": held(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer state": held(t for t in state if t.dim() > 0),
        "peak RSS": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(sizes))
    dist.destroy_process_group()


def bench_shard_memory(args: argparse.Namespace) -> None:
    """Bytes each of 2 ranks holds for parameters, gradients and AdamW state, DDP vs FSDP2."""
    import json
    import subprocess

    rows = []
    for mode in ("ddp", "fsdp"):
        with tempfile.TemporaryDirectory() as out:
            command = [
                *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
                *("--nproc_per_node", str(args.ranks), __file__, "shard-memory"),
                *("--worker", mode, "--model", args.model, "--seq-len", str(args.seq_len)),
                *("--out", out),
            ]
            subprocess.run(command, check=True)
            ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.ranks)]
        for rank, sizes in enumerate(ranks):
            row = {"parallel": mode, "rank": rank}
            row.update({f"{name} GiB": f"{value / 2**30:.3f}" for name, value in sizes.items()})
            held = sum(v for k, v in sizes.items() if k != "peak RSS")
            row["held GiB"] = f"{held / 2**30:.3f}"
            rows.append(row)
    record(
        f"Memory per rank: DDP vs FSDP2 ({args.model} LM, {args.ranks} ranks)",
        rows,
        notes=(
            f"`TokenformerLM({args.model})`, fp32, one AdamW step at batch 1 x {args.seq_len} "
            "tokens under torchrun (gloo, CPU), wrapped as the engine wraps it "
            "(`tokenformer_mm.train.parallel`: `replicate` / `shard`, FSDP2 one unit per block). "
            "Bytes of the tensors each rank holds after the step (a DTensor's local shard); "
            "`held` is their sum. DDP also keeps gradient buckets (about one more gradient's "
            "size, not counted here, in the peak RSS). The FSDP2 model is built on the meta "
            "device, sharded, then materialised and initialised (`to_empty` + `init_weights`): "
            "no rank ever holds the whole model."
        ),
        report=args.report,
    )


def digits_tensors(img_size: int = 32) -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits as normalised RGB images: (train x, train y, val x, val y)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from tokenformer_mm.vision.sources import DIGITS_VAL_EVERY

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=img_size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x, y = (x - mean) / std, torch.tensor(digits.target)
    val = torch.arange(len(y)) % DIGITS_VAL_EVERY == 0  # the embedded digits' split
    return x[~val], y[~val], x[val], y[val]


def recipe_run(model: torch.nn.Module, data: tuple, args: argparse.Namespace) -> list[float]:
    """Validation top-1 after each epoch of one generic recipe (timm's train.py defaults' shape):
    AdamW, weight decay on matrices, warmup then cosine per step, label smoothing, random shifts."""
    import torch.nn.functional as F

    from tokenformer_mm.train.optim import WarmupCosine, param_groups

    x, y, val_x, val_y = data
    steps_per_epoch = len(x) // args.batch_size
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, None), lr=args.lr)
    schedule = WarmupCosine(steps_per_epoch, args.epochs * steps_per_epoch, 1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(args.seed)
    top1 = []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            images = torch.roll(x[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(images), y[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            top1.append(100 * (model(val_x).argmax(-1) == val_y).float().mean().item())
    return top1


def bench_recipe(args: argparse.Namespace) -> None:
    """tokenformer_micro_patch4_32 with each key init against the matched ViT, one recipe."""
    import timm

    import tokenformer_mm  # noqa: F401  (registers the tokenformer_* models)

    data = digits_tensors()
    variants = {
        f"tokenformer_micro_patch4_32, key_init={k}": lambda k=k: timm.create_model(
            "tokenformer_micro_patch4_32", num_classes=10, key_init=k
        )
        for k in args.key_inits
    }
    variants["vit, same width/depth/heads, mlp_ratio 6 (matched)"] = lambda: timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3,
        mlp_ratio=MATCHED_MLP_RATIO, num_classes=10,
    )  # fmt: skip
    rows = []
    for seed in tqdm(args.seeds, desc="seeds"):
        for name, build in variants.items():
            torch.manual_seed(seed)
            args.seed = seed
            start = time.perf_counter()
            top1 = recipe_run(build(), data, args)
            chance = next((i + 1 for i, t in enumerate(top1) if t > 25), "never")
            epochs = sorted({max(1, args.epochs // 4), max(1, args.epochs // 2), args.epochs})
            row = {"model": name, "seed": seed}
            row.update({f"epoch {e}": f"{top1[e - 1]:.1f}" for e in epochs})
            row.update({"first epoch > 25 %": chance})
            rows.append({**row, "seconds": f"{time.perf_counter() - start:.0f}"})
    record(
        "Initialisation: one generic recipe, Tokenformer vs the matched ViT",
        rows,
        notes=(
            f"Digits (1,437 train / 360 val, 32x32), AdamW lr {args.lr}, weight decay "
            f"{args.weight_decay} on matrices, batch {args.batch_size}, one epoch of warmup then "
            f"cosine, label smoothing 0.1, random shifts of up to 2 pixels, {args.epochs} epochs; "
            "validation top-1 %. Chance is 10 %."
        ),
        report=args.report,
    )


MATCHED_VIT_MICRO = (
    "vit_tiny_patch16_224 img_size=32 patch_size=4 embed_dim=96 depth=4 num_heads=3 "
    f"mlp_ratio={MATCHED_MLP_RATIO:g}"
)


def digits_image_folder(root: Path, img_size: int = 32) -> Path:
    """scikit-learn's digits as an ImageFolder of PNGs (``train/``, ``validation/``), the layout
    timm's train.py reads; the split is the embedded digits' one."""
    from sklearn.datasets import load_digits

    from tokenformer_mm.vision.sources import DIGITS_VAL_EVERY

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / ("validation" if i % DIGITS_VAL_EVERY == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image * (255 / 16)).astype(np.uint8))
        pixels.resize((img_size, img_size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


def timm_train_command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    """timm's train.py, unmodified, on one variant ("model key=value ..."), through
    ``python -m tokenformer_mm`` (which registers the models)."""
    model, *kwargs = variant.split()
    command = [sys.executable, "-m", "tokenformer_mm", str(args.train_py)]
    command += ["--data-dir", str(args.data), "--model", model, "--num-classes", "10"]
    command += ["--img-size", "32", "--opt", "adamw", "--lr", str(args.lr), "-b", "32"]
    command += ["--epochs", str(args.epochs), "--seed", str(seed), "--device", "cpu"]
    command += ["--workers", "1", "--checkpoint-hist", "1", "--log-interval", "1000"]
    command += ["--output", str(out), "--experiment", "run"]
    command += (["--model-kwargs", *kwargs] if kwargs else []) + shlex.split(args.train_args)
    return command


def run_in_parallel(
    commands: list[list[str]], logs: list[Path], jobs: int, desc: str
) -> list[float]:
    """Run the commands, ``jobs`` at a time with one share of the cores each; their seconds."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))
    pending = list(range(len(commands)))
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    seconds = [0.0] * len(commands)
    with tqdm(total=len(commands), desc=desc) as bar:
        while pending or running:
            while pending and len(running) < jobs:
                i = pending.pop(0)
                with logs[i].open("w") as log:
                    process = subprocess.Popen(
                        commands[i], stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                running[i] = (process, time.perf_counter())
            for i, (process, start) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[i]
                if process.returncode != 0:
                    tail = logs[i].read_text()[-3000:]
                    raise RuntimeError(f"{shlex.join(commands[i])} failed:\n{tail}")
                seconds[i] = time.perf_counter() - start
                bar.update()
            time.sleep(1)
    return seconds


def run_variants(
    args: argparse.Namespace, tmp: str, command: Callable[..., list[str]], desc: str
) -> list[tuple[str, int, Path, float]]:
    """Every (variant, seed) of ``args`` as one process (``command(args, variant, seed, out)``),
    ``args.jobs`` at a time; returns (variant, seed, output folder, seconds) per run."""
    runs = [(variant, seed) for seed in args.seeds for variant in args.variants]
    outputs = [Path(tmp) / f"run{i}" for i in range(len(runs))]
    commands = [command(args, v, s, o) for (v, s), o in zip(runs, outputs, strict=True)]
    logs = [o.with_suffix(".log") for o in outputs]
    seconds = run_in_parallel(commands, logs, args.jobs, desc)
    return [(v, s, o, t) for (v, s), o, t in zip(runs, outputs, seconds, strict=True)]


def bench_timm_train(args: argparse.Namespace) -> None:
    """Variants under timm's own train.py, several processes at a time."""
    import csv

    if not args.train_py.is_file():
        raise SystemExit(
            f"no timm train.py at {args.train_py}: pass --train-py, the train.py of a "
            "pytorch-image-models checkout"
        )
    with tempfile.TemporaryDirectory() as tmp:
        args.data = digits_image_folder(Path(tmp) / "digits")
        rows = []
        for variant, seed, out, sec in run_variants(
            args, tmp, timm_train_command, "timm train.py runs"
        ):
            with (out / "run" / "summary.csv").open() as f:
                top1 = [float(row["eval_top1"]) for row in csv.DictReader(f)]
            epochs = sorted({max(1, len(top1) // 4), max(1, len(top1) // 2), len(top1)})
            row = {"model": variant, "seed": seed}
            row.update({f"epoch {e}": f"{top1[e - 1]:.1f}" for e in epochs})
            rows.append({**row, "best": f"{max(top1):.1f}", "seconds": f"{sec:.0f}"})
    for variant in args.variants:
        final = [float(r[f"epoch {args.epochs}"]) for r in rows if r["model"] == variant]
        mean, spread = np.mean(final), np.std(final)
        rows.append({**dict.fromkeys(rows[0], ""), "model": f"**{variant}: mean**"})
        rows[-1][f"epoch {args.epochs}"] = f"**{mean:.1f}** ± {spread:.1f}"
    record(
        "timm's own train.py: Tokenformer vs the matched ViT",
        rows,
        notes=(
            "timm's train.py unmodified (`python -m tokenformer_mm <train.py> --model ...`): "
            "digits as an ImageFolder of 32x32 PNGs (1,437 train / 360 val), AdamW "
            f"lr {args.lr}, batch 32, {args.epochs} epochs, everything else timm's defaults "
            "(5 warmup epochs from lr 1e-5, cosine, weight decay 2e-5, label smoothing 0.1, "
            "RandomResizedCrop + flip + colour jitter)"
            f"{'; extra: ' + args.train_args if args.train_args else ''}. "
            "Validation top-1 %; chance is 10 %; ± is the std over seeds."
        ),
        report=args.report,
    )


def byte_stream(split: str) -> torch.Tensor:
    """The CPython help texts of a split as one stream of UTF-8 bytes, 256 between documents."""
    from tokenformer_mm.language.sources import pydoc_documents

    ids: list[int] = []
    for _, text in pydoc_documents(split):
        ids += [*text.encode("utf-8"), 256]
    return torch.tensor(ids)


def lm_recipe_run(model: torch.nn.Module, train: torch.Tensor, val: torch.Tensor, args) -> dict:
    """Validation nats/byte along the language main job's recipe (configs/language.yaml): AdamW
    lr 3e-3, weight decay 0.1 on matrices, betas (0.9, 0.95), 100 warmup steps, cosine, clip 1."""
    from tokenformer_mm.train.optim import WarmupCosine, param_groups

    batch, length = args.batch_size, args.seq_len
    optimizer = torch.optim.AdamW(param_groups(model, 0.1, None), lr=args.lr, betas=(0.9, 0.95))
    schedule = WarmupCosine(100, args.steps, 1e-5 / args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(args.seed)
    blocks = (len(val) - 1) // length
    val_blocks = torch.stack([val[i * length : i * length + length + 1] for i in range(blocks)])
    curve = {}
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train) - length - 1, (batch,), generator=generator).tolist()
        tokens = torch.stack([train[s : s + length + 1] for s in starts])
        loss = model(tokens[:, :-1], tokens[:, 1:])[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                total = sum(
                    model(b[:, :-1], b[:, 1:])[1].item() * len(b) for b in val_blocks.split(32)
                )
            curve[step] = total / blocks
            model.train()
    return curve


def bench_lm_recipe(args: argparse.Namespace) -> None:
    """Tokenformer LM key inits vs the matched nanoGPT-style GPT: loss at equal training FLOPs."""
    from tokenformer_mm.flops import training_flops
    from tokenformer_mm.language import TokenformerLM, lm_config

    train, val = byte_stream("train"), byte_stream("val")
    config = lm_config(args.model, context_length=args.seq_len)
    variants: dict[str, Callable[[], torch.nn.Module]] = {
        f"Tokenformer {args.model}, key_init={k}": lambda k=k: TokenformerLM(
            lm_config(args.model, context_length=args.seq_len, key_init=k)
        )
        for k in args.key_inits
    }
    variants[f"nanoGPT-style GPT, mlp_ratio {MATCHED_MLP_RATIO:g} (matched)"] = lambda: GPT(
        config.vocab_size, config.context_length, config.dim, config.depth, config.num_heads,
        MATCHED_MLP_RATIO,
    )  # fmt: skip
    rows = []
    for seed in tqdm(args.seeds, desc="seeds"):
        for name, build in variants.items():
            torch.manual_seed(seed)
            args.seed = seed
            model = build()
            sample = torch.randint(0, config.vocab_size, (1, args.seq_len + 1))
            flops = training_flops(model, lambda m=model, x=sample: m(x[:, :-1], x[:, 1:])[1])
            start = time.perf_counter()
            curve = lm_recipe_run(model, train, val, args)
            row = {"model": name, "seed": seed}
            row.update({f"step {s}": f"{v:.3f}" for s, v in curve.items()})
            row["training TFLOPs"] = f"{flops * args.batch_size * args.steps / 1e12:.3g}"
            rows.append({**row, "seconds": f"{time.perf_counter() - start:.0f}"})
    record(
        "Language: Tokenformer key inits vs the matched GPT at equal FLOPs",
        rows,
        notes=(
            f"The CPython help texts as UTF-8 bytes, batch {args.batch_size} x {args.seq_len}, "
            f"{args.steps} steps of the language main job's recipe (AdamW lr {args.lr}, betas "
            "(0.9, 0.95), weight decay 0.1 on matrices, 100 warmup steps then cosine, gradient "
            "clipping 1.0) for every model; validation nats per byte on the whole validation "
            "split. FLOPs by FlopCounterMode (tokenformer_mm.flops)."
        ),
        report=args.report,
    )


def first_update_of_new_rows(
    args: argparse.Namespace, seeded: bool | None, beta2: float
) -> list[float]:
    """|first AdamW update| / lr of the new key rows after growing a trained LM x2 (exact):
    ``seeded`` True: the growth utility's moment seeding; False: zero moments (its hook removed,
    the kick issue 14 measured); None: a fresh AdamW over the grown model (the reference)."""
    from tokenformer_mm import Pattention, grow_model
    from tokenformer_mm.growth.optimizer import NEW_ROWS
    from tokenformer_mm.language import TokenformerLM, lm_config

    torch.manual_seed(args.seed)
    train = byte_stream("train")
    model = TokenformerLM(lm_config(args.model, context_length=args.seq_len))

    def batch() -> torch.Tensor:
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch_size,)).tolist()
        return torch.stack([train[s : s + args.seq_len + 1] for s in starts])

    def adam_step(optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(tokens[:, :-1], tokens[:, 1:])[1].backward()
        optimizer.step()

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, beta2))
    for _ in range(args.steps):
        adam_step(optimizer, batch())
    grow_model(model, factor=2, optimizer=None if seeded is None else optimizer)
    if seeded is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, beta2))
    elif not seeded:  # zero moments: drop the seeding growth put in the optimizer's state
        for state in optimizer.state.values():
            state.pop(NEW_ROWS, None)
    layers = [m for m in model.modules() if isinstance(m, Pattention)]
    before = [m.key_tokens.detach()[m.num_tokens // 2 :].clone() for m in layers]
    adam_step(optimizer, batch())
    moved = [
        (m.key_tokens.detach()[m.num_tokens // 2 :] - old).abs().flatten()
        for m, old in zip(layers, before, strict=True)
    ]
    return (torch.cat(moved) / args.lr).tolist()


def bench_growth_kick(args: argparse.Namespace) -> None:
    """How far the new parameter tokens move in the first step after growth, against lr."""
    rows = []
    cases = {
        "zero moments (no seeding: before the fix)": False,
        "seeded moments (grow_model(..., optimizer=))": True,
        "a fresh AdamW over the grown model (reference)": None,
    }
    for beta2 in args.beta2:
        for name, seeded in tqdm(cases.items(), desc=f"beta2 {beta2}"):
            moved = torch.tensor(first_update_of_new_rows(args, seeded, beta2))
            rows.append(
                {
                    "β2": str(beta2),
                    "optimizer state of the new rows": name,
                    "median |update| / lr": f"{moved.median():.3f}",
                    "max |update| / lr": f"{moved.max():.3f}",
                }
            )
    record(
        "Growth: the first update of the new parameter tokens",
        rows,
        notes=(
            f"TokenformerLM {args.model} trained {args.steps} AdamW steps (lr {args.lr}, β1 0.9, "
            f"batch {args.batch_size} x {args.seq_len} bytes of the CPython help texts), grown "
            "x2 with init=exact, then one step; all entries of the new key rows. Zero moments "
            "with the parameter's shared step count t move each entry by (1 - β1) / (1 - β1^t) "
            "x sqrt((1 - β2^t) / (1 - β2)) x lr, which grows with t to (1 - β1) / sqrt(1 - β2): "
            "3.2 at β2 0.999 (bias corrections ~1 late in training), 0.45 at 0.95. Seeding the "
            "second moment to g² as in a fresh AdamW and leaving the first at zero: (1 - β1) x lr, "
            "ramping up over ~10 steps (a re-warmup of the new rows only). A fresh AdamW moves "
            "each entry by lr."
        ),
        report=args.report,
    )


MATCHED_VIT_CLIP = "matched-vit"
# open_clip's own ViT towers in TokenformerCLIP-micro's shape (mlp_ratio matches the parameters).
MATCHED_VIT_CLIP_CFG = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 32, "patch_size": 4, "width": 96, "layers": 4, "head_width": 32,
        "mlp_ratio": MATCHED_MLP_RATIO,
    },
    "text_cfg": {
        "context_length": 20, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 2,
        "mlp_ratio": MATCHED_MLP_RATIO,
    },
}  # fmt: skip


def clip_train_command(args: argparse.Namespace, variant: str, seed: int, out: Path) -> list[str]:
    """open_clip's own trainer (``open_clip_train.main``) on the digits caption shards."""
    model = args.variant_models[variant]
    shards = args.shards
    command = [sys.executable, "-m", "tokenformer_mm", "-m", "open_clip_train.main"]
    command += ["--train-data", str(shards / "train-{000000..000007}.tar")]
    command += ["--val-data", str(shards / "val-{000000..000001}.tar")]
    command += ["--dataset-type", "webdataset", "--train-num-samples", "1437"]
    command += ["--val-num-samples", "360", "--model", model, "--batch-size", str(args.batch_size)]
    command += ["--lr", str(args.lr), "--warmup", str(args.warmup), "--epochs", str(args.epochs)]
    command += ["--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--workers", "1"]
    command += ["--precision", "fp32", "--device", "cpu", "--seed", str(seed), "--report-to", ""]
    command += ["--zeroshot-frequency", "0", "--save-frequency", "0", "--logs", str(out)]
    return [*command, "--name", "run", *shlex.split(args.train_args)]


def variant_settings(variant: str, settings: list[str]) -> dict[str, object]:
    """A variant's ``key=value`` settings as keyword arguments, parsed as timm's --model-kwargs
    parses them: Python literals (numbers, None) as such, other text as text."""
    parsed: dict[str, object] = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise ValueError(f"variant {variant!r}: {setting!r} is not key=value")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    return parsed


def open_clip_config(name: str) -> dict:
    """A registered open_clip model config (ours included), as a dict to edit."""
    import open_clip

    import tokenformer_mm.clip  # noqa: F401  (registers the TokenformerCLIP configs)

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    return cfg


def bench_clip_train(args: argparse.Namespace) -> None:
    """TokenformerCLIP vs open_clip's ViT towers of its shape, under open_clip's own trainer."""
    import json

    from tokenformer_mm.clip.pairs import write_digits_pair_shards

    with tempfile.TemporaryDirectory() as tmp:
        args.shards = write_digits_pair_shards(Path(tmp) / "shards")
        args.variant_models = {}
        for i, variant in enumerate(args.variants):  # a local-dir config for all but a name
            name, *settings = variant.split()
            if name == MATCHED_VIT_CLIP:
                cfg = MATCHED_VIT_CLIP_CFG
            elif settings:  # "key=value" in the text tower's config (open_clip passes no
                # arguments to a timm image tower: its settings are the timm model's defaults)
                cfg = open_clip_config(name)
                cfg["text_cfg"].update(variant_settings(variant, settings))
            else:
                args.variant_models[variant] = variant
                continue
            folder = Path(tmp) / f"variant{i}"
            folder.mkdir()
            (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
            args.variant_models[variant] = f"local-dir:{folder}"
        rows = []
        chance = math.log(args.batch_size)
        for variant, seed, out, sec in run_variants(
            args, tmp, clip_train_command, "open_clip_train runs"
        ):
            lines = (out / "run" / "checkpoints" / "results.jsonl").read_text().splitlines()
            results = [json.loads(line) for line in lines]
            loss = [r["clip_val_loss"] for r in results]
            epochs = sorted({1, max(1, len(loss) // 2), len(loss)})
            row = {"model": variant, "seed": seed}
            row.update({f"val loss, epoch {e}": f"{loss[e - 1]:.3f}" for e in epochs})
            row["image-to-text R@1 %"] = f"{100 * results[-1]['image_to_text_R@1']:.1f}"
            row["collapsed"] = "yes" if min(loss) > 0.98 * chance else "no"
            rows.append({**row, "seconds": f"{sec:.0f}"})
    record(
        "open_clip's own trainer: Tokenformer towers vs ViT towers of the same shape",
        rows,
        notes=(
            "`python -m tokenformer_mm -m open_clip_train.main` (open_clip's trainer, unmodified) "
            "on the digits caption shards (`make_shards.py digits-pairs`: 1,437 train / 360 val "
            f"pairs), batch {args.batch_size}, lr {args.lr}, {args.warmup} warmup steps, cosine, "
            f"{args.epochs} epochs, open_clip's defaults otherwise (no gradient clipping, weight "
            "decay 0.2, fp32) and its ViT betas for both (0.9, 0.98, eps 1e-6)"
            f"{'; extra: ' + args.train_args if args.train_args else ''}. `matched-vit` is "
            "open_clip's own VisionTransformer / TextTransformer in TokenformerCLIP-micro's "
            f"widths, depths and heads (mlp_ratio {MATCHED_MLP_RATIO:g}). Chance validation loss "
            f"is ln {args.batch_size} = {chance:.3f}; collapsed = never 2 % below it."
        ),
        report=args.report,
    )


def _key_init(text: str) -> str | float:
    """A key_init name ("fan_in", "official") or an explicit std ("0.2")."""
    try:
        return float(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    patt = commands.add_parser("pattention", help="fused vs plain vs official Pattention")
    patt.add_argument(
        "--shapes", type=parse_shape, nargs="+", default=[parse_shape(s) for s in PATTENTION_SHAPES]
    )
    patt.add_argument("--norm", default="l2_norm_gelu")
    patt.add_argument("--repeats", type=int, default=15)
    patt.set_defaults(run=bench_pattention)
    data = commands.add_parser("data", help="image (vs torchvision ImageFolder) and text loaders")
    data.add_argument("--images", type=int, default=1024)
    data.add_argument("--img-size", type=int, default=224)
    data.add_argument("--batch-size", type=int, default=64)
    data.add_argument("--workers", type=int, default=2)
    data.add_argument("--epochs", type=int, default=2)
    data.add_argument("--repeats", type=int, default=3)
    data.add_argument("--seq-len", type=int, default=256, help="text pipeline sequence length")
    data.set_defaults(run=bench_data)
    vis = commands.add_parser("vision", help="tokenformer_* vs timm ViT, training and inference")
    vis.add_argument("--model", default="tokenformer_tiny_patch16_224")
    vis.add_argument("--batch-size", type=int, default=16)
    vis.add_argument("--repeats", type=int, default=8)
    vis.set_defaults(run=bench_vision)
    lang = commands.add_parser("language", help="LM training and generation throughput")
    lang.add_argument("--model", default="small", help="a name in tokenformer_mm.language.CONFIGS")
    lang.add_argument("--batch-size", type=int, default=16)
    lang.add_argument("--seq-len", type=int, default=256)
    lang.add_argument("--repeats", type=int, default=10)
    lang.add_argument("--new-tokens", type=int, default=512)
    lang.set_defaults(run=bench_language)
    rec = commands.add_parser("recipe", help="key inits vs the matched ViT under one recipe")
    rec.add_argument("--key-inits", nargs="+", default=["fan_in", "official"], type=_key_init)
    rec.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    rec.add_argument("--epochs", type=int, default=12)
    rec.add_argument("--lr", type=float, default=2e-3)
    rec.add_argument("--weight-decay", type=float, default=0.05)
    rec.add_argument("--batch-size", type=int, default=32)
    rec.set_defaults(run=bench_recipe)
    timm_train = commands.add_parser("timm-train", help="Tokenformer vs ViT under timm's train.py")
    timm_train.add_argument("--train-py", type=Path, required=True, help="timm's train.py")
    timm_train.add_argument(
        "--variants",
        nargs="+",
        default=["tokenformer_micro_patch4_32", MATCHED_VIT_MICRO],
        help='"model key=value ..." (the values go to --model-kwargs)',
    )
    timm_train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    timm_train.add_argument("--epochs", type=int, default=12)
    timm_train.add_argument("--lr", type=float, default=2e-3)
    timm_train.add_argument("--train-args", default="", help="more train.py arguments")
    timm_train.add_argument("--jobs", type=int, default=2, help="runs at a time")
    timm_train.set_defaults(run=bench_timm_train)
    lm_rec = commands.add_parser("lm-recipe", help="LM variants vs the matched GPT, loss/FLOP")
    lm_rec.add_argument(
        "--model", default="small", help="a name in tokenformer_mm.language.CONFIGS"
    )
    lm_rec.add_argument("--key-inits", nargs="+", default=["fan_in"], type=_key_init)
    lm_rec.add_argument("--seeds", type=int, nargs="+", default=[0])
    lm_rec.add_argument("--steps", type=int, default=600)
    lm_rec.add_argument("--eval-every", type=int, default=200)
    lm_rec.add_argument("--lr", type=float, default=3e-3)
    lm_rec.add_argument("--batch-size", type=int, default=16)
    lm_rec.add_argument("--seq-len", type=int, default=256)
    lm_rec.set_defaults(run=bench_lm_recipe)
    clip_train = commands.add_parser("clip-train", help="CLIP towers under open_clip's trainer")
    clip_train.add_argument(
        "--variants",
        nargs="+",
        default=["TokenformerCLIP-micro", MATCHED_VIT_CLIP],
        help='open_clip model names, or "name key=value ..." (set in the text tower config)',
    )
    clip_train.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    clip_train.add_argument("--epochs", type=int, default=8)
    clip_train.add_argument("--lr", type=float, default=2e-3)
    clip_train.add_argument("--batch-size", type=int, default=32)
    clip_train.add_argument("--warmup", type=int, default=45, help="steps (45 = one epoch)")
    clip_train.add_argument("--train-args", default="", help="more open_clip_train arguments")
    clip_train.add_argument("--jobs", type=int, default=2, help="runs at a time")
    clip_train.set_defaults(run=bench_clip_train)
    kick = commands.add_parser("growth-kick", help="the first update of new tokens after growth")
    kick.add_argument("--model", default="small", help="a name in tokenformer_mm.language.CONFIGS")
    kick.add_argument("--steps", type=int, default=200, help="AdamW steps before growing")
    kick.add_argument("--lr", type=float, default=3e-3)
    kick.add_argument("--batch-size", type=int, default=16)
    kick.add_argument("--seq-len", type=int, default=128)
    kick.add_argument("--seed", type=int, default=0)
    kick.add_argument("--beta2", type=float, nargs="+", default=[0.999, 0.95])
    kick.set_defaults(run=bench_growth_kick)
    shard = commands.add_parser("shard-memory", help="bytes per rank: DDP vs FSDP2")
    shard.add_argument("--model", default="450M", help="a name in tokenformer_mm.language.CONFIGS")
    shard.add_argument("--ranks", type=int, default=2)
    shard.add_argument("--seq-len", type=int, default=16)
    shard.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    shard.add_argument("--out", help=argparse.SUPPRESS)
    shard.set_defaults(run=lambda a: shard_memory_worker(a) if a.worker else bench_shard_memory(a))
    clip = commands.add_parser("clip-eval", help="CLIP evaluation metrics: peak memory, time")
    clip.add_argument("--pairs", type=int, nargs="+", default=[50_000])
    clip.add_argument("--full-matrix-pairs", type=int, nargs="*", default=[5_000])
    clip.set_defaults(run=bench_clip_eval)
    for command in commands.choices.values():
        command.add_argument(
            "--report", type=Path, default=REPORT, help="markdown file to append to"
        )
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
