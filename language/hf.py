"""The language tower in the Hugging Face ecosystem: ``TokenformerConfig`` (``model_type =
"tokenformer"``) and ``TokenformerForCausalLM``, registered with ``AutoConfig`` and
``AutoModelForCausalLM`` when this module is imported (no ``trust_remote_code``, no code inside
checkpoints)::

    import tokenformer_mm.language.hf  # registers the classes
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained("runs/lm/export")  # TokenformerLM.save_pretrained
    model.generate(input_ids, attention_mask=mask, num_beams=4, max_new_tokens=20)

``TokenformerForCausalLM`` holds a ``TokenformerLM`` and computes through it (one implementation
of the network): its ``generate`` is transformers' own (beam search, top-p, repetition penalty,
stopping criteria, ``pipeline``), its cache transformers' ``DynamicCache``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenformer_mm.extras import missing_extra

from .model import LMConfig, TokenformerLM

try:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.cache_utils import Cache, DynamicCache
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.utils import logging
except ModuleNotFoundError as error:  # the [hf] extra
    raise missing_extra(error, "hf") from error

logger = logging.get_logger(__name__)  # transformers' own: warning_once, its verbosity
MODEL_TYPE = "tokenformer"
LM_FIELDS = tuple(field.name for field in dataclasses.fields(LMConfig))
# transformers 5.25 renamed the cache field of its outputs from past_key_values to cache
CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else ("past_key_values")
)


class TokenformerConfig(PretrainedConfig):
    """``LMConfig``'s fields as a transformers config, under the names transformers looks for
    too (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``max_position_embeddings``); the defaults are ``LMConfig``'s."""

    model_type = MODEL_TYPE
    attribute_map = {  # noqa: RUF012  (transformers reads this class attribute)
        "hidden_size": "dim",
        "num_hidden_layers": "depth",
        "num_attention_heads": "num_heads",
        "max_position_embeddings": "context_length",
    }

    def __init__(self, **kwargs: Any) -> None:
        for field in dataclasses.fields(LMConfig):
            setattr(self, field.name, kwargs.pop(field.name, field.default))
        self.use_cache = kwargs.pop("use_cache", True)
        kwargs.setdefault("tie_word_embeddings", True)  # the logits use the embedding
        super().__init__(**kwargs)

    def lm_config(self) -> LMConfig:
        return LMConfig(**{name: getattr(self, name) for name in LM_FIELDS})


class TokenformerForCausalLM(PreTrainedModel, GenerationMixin):
    """A ``TokenformerLM`` behind transformers' causal-LM interface: ``input_ids`` or
    ``inputs_embeds``, ``attention_mask`` (left padding), ``position_ids``, the cache, ``labels``
    (aligned with the inputs; shifted here, as every transformers causal LM does)."""

    config_class = TokenformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["TokenformerBlock"]  # noqa: RUF012
    supports_gradient_checkpointing = True

    def __init__(self, config: TokenformerConfig) -> None:
        super().__init__(config)
        self.model = TokenformerLM(config.lm_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, TokenformerLM):  # the model's own init, nothing of transformers'
            module.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> None:
        return None  # the logits are the embedding's transpose, no module of their own

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Any = None) -> None:
        """transformers' switch, onto the model's own (each block recomputed in backward)."""
        self.model.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.model.set_grad_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.grad_checkpointing

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and self.is_gradient_checkpointing and self.training:
            # as transformers' own models do: the cached path never recomputes blocks
            logger.warning_once(
                "`use_cache=True` is incompatible with gradient checkpointing. Setting "
                "`use_cache=False`."
            )
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        past = [(layer.keys, layer.values) for layer in cache.layers] if past_len else None
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the same function, on SDPA's causal kernel
        if use_cache or past_len:
            logits, present = self.model.forward_cached(
                input_ids, past, attention_mask, inputs_embeds, position_ids
            )
        else:  # training: the plain path, which recomputes blocks under grad checkpointing
            hidden = self.model._hidden(  # position_ids: packed sequences (padding-free)
                input_ids, attention_mask, 0, inputs_embeds=inputs_embeds, position_ids=position_ids
            )
            logits = F.linear(hidden, self.model.embed.weight)  # tied output embedding
        if use_cache:
            for i, (keys, values) in enumerate(present):
                cache.update(keys[:, :, past_len:], values[:, :, past_len:], i)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None}
        )


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``model_type = "tokenformer"``."""
    AutoConfig.register(MODEL_TYPE, TokenformerConfig, exist_ok=True)
    AutoModelForCausalLM.register(TokenformerConfig, TokenformerForCausalLM, exist_ok=True)


register()
