"""CLIP evaluation metrics from normalised features, in bounded memory at any size.

Retrieval needs every image against every caption: an ``N x N`` similarity matrix, 10 GB in
fp32 for ImageNet's 50,000 validation pairs. Here it is never whole: rows are scored
``chunk_size`` at a time (``chunk_size x N`` floats), and each chunk leaves only its row
losses and best matches behind. A retrieved caption counts as a hit when its text is the true
caption's (duplicate captions are interchangeable), checked for the retrieved row only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_SIZE = 1024  # rows scored at once: 1024 x 50,000 fp32 scores are 0.2 GB


def _rowwise(
    queries: torch.Tensor, keys: torch.Tensor, scale: float, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row i: the cross-entropy of ``scale · q_i · K.T`` against key i, and the argmax."""
    losses, best = [], []
    for start in range(0, len(queries), chunk_size):
        logits = scale * queries[start : start + chunk_size] @ keys.T  # (chunk, N)
        target = torch.arange(start, start + len(logits), device=logits.device)
        losses.append(F.cross_entropy(logits, target, reduction="none"))
        best.append(logits.argmax(dim=1))
    return torch.cat(losses), torch.cat(best)


def clip_metrics(
    image: torch.Tensor,
    text: torch.Tensor,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    logit_scale: float,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, float]:
    """Contrastive loss, image->text / text->image recall@1 and zero-shot top-1.

    Args:
        image, text: (N, D) L2-normalised features of N image-caption pairs.
        tokens: (N, T) the captions' token ids (equal rows are the same caption).
        labels: (N,) class of each image, -1 where unknown (left out of zero-shot accuracy).
        class_embeddings: (classes, D) normalised embedding of each class name's prompts.
        logit_scale: the model's ``logit_scale.exp()``.
    """
    if len(image) == 0:
        raise ValueError("no image-caption pairs to evaluate; check data.val_shards")
    image_loss, image_best = _rowwise(image, text, logit_scale, chunk_size)  # i -> caption
    text_loss, text_best = _rowwise(text, image, logit_scale, chunk_size)  # caption -> image
    # Image i retrieved caption j: a hit if caption j reads as caption i. Caption i retrieved
    # image j: a hit if image j's own caption reads as caption i.
    i2t_hit = (tokens[image_best] == tokens).all(dim=1)
    t2i_hit = (tokens[text_best] == tokens).all(dim=1)
    labelled = labels >= 0
    zero_shot = 0.0
    if labelled.any():
        predicted = (image[labelled] @ class_embeddings.T).argmax(dim=1)
        zero_shot = 100 * (predicted == labels[labelled]).float().mean().item()
    return {
        "val/loss": ((image_loss.mean() + text_loss.mean()) / 2).item(),
        "val/zeroshot_top1": zero_shot,
        "val/i2t_r1": 100 * i2t_hit.float().mean().item(),
        "val/t2i_r1": 100 * t2i_hit.float().mean().item(),
    }
