"""Causal language modelling as an engine ``Task``: the LM, the packed loaders, loss, perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tokenformer_mm.distributed import sum_over_ranks
from tokenformer_mm.shards import run_shards

from .data import text_eval_loader, text_train_loader
from .model import IGNORE_INDEX, TokenformerLM, lm_config
from .sources import EMBEDDED_CORPORA
from .tokenizer import load_tokenizer


def block_targets(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of packed blocks; targets past a block's ``length`` are ignored."""
    tokens = batch["tokens"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    positions = torch.arange(targets.shape[1], device=tokens.device)
    targets[positions[None, :] >= batch["length"][:, None] - 1] = IGNORE_INDEX
    return inputs, targets


class LanguageModelingTask:
    unit = "tok"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.config = lm_config(
            cfg.model.name, **{**cfg.model.overrides, "vocab_size": self.tokenizer.vocab_size}
        )
        if cfg.data.seq_len > self.config.context_length:
            raise ValueError(
                f"data.seq_len={cfg.data.seq_len} exceeds the model's context_length="
                f"{self.config.context_length}; lower it or set model.overrides.context_length"
            )
        self.train_shards, self.val_shards = run_shards(cfg.data, EMBEDDED_CORPORA)

    def build_model(self) -> nn.Module:
        return TokenformerLM(self.config)

    def train_loader(self) -> DataLoader:
        data = self.cfg.data
        return text_train_loader(
            self.train_shards,
            self.tokenizer,
            self.cfg.train.batch_size,
            data.seq_len,
            num_workers=data.num_workers,
            seed=self.cfg.seed,
            shuffle_buffer=data.shuffle_buffer,
            text_field=data.text_field,
        )

    def eval_loader(self) -> DataLoader:
        data = self.cfg.data
        return text_eval_loader(
            self.val_shards,
            self.tokenizer,
            data.eval_batch_size,
            data.seq_len,
            num_workers=data.num_workers,
            text_field=data.text_field,
        )

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        inputs, targets = block_targets(batch)
        return model(inputs, targets)[1]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        loss = torch.zeros((), dtype=torch.float64, device=device)  # summed over tokens
        count = torch.zeros((), dtype=torch.float64, device=device)
        for batch in loader:
            inputs, targets = block_targets({k: v.to(device) for k, v in batch.items()})
            logits = model(inputs, targets)[0].float()
            loss += F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            count += (targets != IGNORE_INDEX).sum()
        model.train(was_training)
        loss, count = sum_over_ranks({"loss": loss, "count": count}).values()
        if count == 0:
            raise ValueError("the validation loader yielded no tokens; check data.val_shards")
        return {"val/loss": loss / count, "val/ppl": math.exp(loss / count)}

    def batch_items(self, batch: dict[str, Any]) -> int:
        return int(batch["tokens"][:, 1:].numel())
