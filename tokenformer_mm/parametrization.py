"""How Pattention's parameter tokens start, and how their scale follows the token count.

Keys: ``key_init`` (``KEY_INITS``); their fan-in is ``d_in``, the same at every token count.
Values: the official "wang init"; under μP a multiplier ``base / n`` in the forward
(``value_multiplier``) and an init that follows ``n`` (``value_init_std``): the values are a
layer whose fan-in is the token count ``n``. Under Adam every entry of ``V`` moves about ``lr`` a
step, so with the paper's math the output moves further as ``n`` grows and the optimal rate
falls; the multiplier makes the move the same at every ``n``, and being inside the layer, not a
per-parameter rate, every Adam-like optimizer (the engine's, timm's, open_clip's, Hugging Face's)
inherits it (docs/design.md, "Learning rate across token counts").
"""

from __future__ import annotations

import math

# How the key tokens start. Under l2_norm_gelu a layer's output ignores the keys' common scale,
# so their init sets how far an optimizer step turns them: AdamW moves each entry by ~lr, a
# relative step of lr / std. "fan_in", N(0, 1/d_in), keeps that step moderate at every width;
# "official", N(0, 0.02), is the paper's: at lr 2e-3 it turns the keys ~10 % a step, and vision
# models learn far slower than a ViT (docs/benchmarks_history.md, "Initialisation").
KEY_INITS = ("fan_in", "official")
OFFICIAL_KEY_INIT_STD = 0.02


def key_init_std(key_init: str | float, in_features: int) -> float:
    """The std of the key tokens for a ``key_init`` scheme (``KEY_INITS``) or an explicit std."""
    if key_init == "fan_in":
        return in_features**-0.5
    if key_init == "official":
        return OFFICIAL_KEY_INIT_STD
    if isinstance(key_init, (int, float)) and not isinstance(key_init, bool) and key_init > 0:
        return float(key_init)
    raise ValueError(
        f"unknown Pattention key_init {key_init!r}; expected one of {KEY_INITS} or a positive std"
    )


def wang_init_std(dim: int, depth: int) -> float:
    """GPT-NeoX "wang init" std, ``2 / (L · sqrt(d))``: the official init of the value tokens."""
    return 2.0 / (depth * math.sqrt(dim))


def value_multiplier(base_tokens: int | None, num_tokens: int) -> float:
    """The factor on the value tokens: 1 for the paper's parametrization, ``b / n`` under μP."""
    return 1.0 if base_tokens is None else base_tokens / num_tokens


def value_init_std(wang_std: float, base_tokens: int | None, num_tokens: int) -> float:
    """The std the stored value tokens start at: the wang init, times ``sqrt(n / b)`` under μP.

    The values then act as ``b / n · V`` with std ``wang · sqrt(b / n)``, 1/sqrt(fan-in) in ``n``:
    each layer's output at init is the same size at every token count, and so is its change over
    the first steps, where the wang init itself (effective std ``wang · b / n``) makes both shrink
    as ``n`` grows (the coordinate check, docs/benchmarks.md, "Learning rate across token
    counts").
    """
    return wang_std if base_tokens is None else wang_std * math.sqrt(num_tokens / base_tokens)


PARAMETRIZATIONS = ("standard", "mup")
# μP's base of each layer kind, per unit of width: the official ratios (q/k/v/proj n = d, FFN
# n = 4d), where the two parametrizations are one function from the same weights, so every
# official checkpoint and every model at those ratios computes exactly as under the paper's.
BASE_TOKENS_PER_DIM = {"qkv": 1, "proj": 1, "ffn": 4}


def base_tokens(parametrization: str, kind: str, dim: int) -> int | None:
    """The ``base_tokens`` of a block's Pattention of ``kind`` (None: the paper's math)."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"unknown parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}"
        )
    return BASE_TOKENS_PER_DIM[kind] * dim if parametrization == "mup" else None
