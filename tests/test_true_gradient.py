"""Every tower, built with its defaults the way users build it, trains on the loss's own gradient.

Each check compares the backward of a real loss (both Pattention paths: q/k/v always take the
fused one, larger layers too at these sizes) with a central finite difference of the same loss,
in float64, along one random direction of every parameter at once.
"""

import open_clip
import pytest
import timm
import torch

import tokenformer_mm.clip  # noqa: F401  (registers the open_clip configs)
from tokenformer_mm import Pattention
from tokenformer_mm.language import TokenformerLM, lm_config


def assert_gradient_is_the_losses(model: torch.nn.Module, loss_fn) -> None:
    model.double()
    params = [p for p in model.parameters() if p.requires_grad]
    assert any(isinstance(m, Pattention) for m in model.modules())
    model.zero_grad()
    loss_fn().backward()
    generator = torch.Generator().manual_seed(0)
    directions = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    along = sum((p.grad * d).sum() for p, d in zip(params, directions, strict=True))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions, strict=True):
            p.add_(eps * d)
        up = loss_fn()
        for p, d in zip(params, directions, strict=True):
            p.sub_(2 * eps * d)
        down = loss_fn()
    finite = (up - down) / (2 * eps)
    assert along.item() == pytest.approx(finite.item(), rel=1e-5, abs=1e-9)


def test_the_image_tower_from_timm():
    torch.manual_seed(0)
    model = timm.create_model("tokenformer_micro_patch4_32", num_classes=10)
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.arange(8) % 10
    assert_gradient_is_the_losses(
        model, lambda: torch.nn.functional.cross_entropy(model(images), labels)
    )


def test_both_clip_towers_from_open_clip():
    torch.manual_seed(0)
    model = open_clip.create_model("TokenformerCLIP-micro")
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    texts = open_clip.get_tokenizer("TokenformerCLIP-micro")(["a 0", "a 1", "a 2", "a 3"])

    def loss():
        image, text, scale = model(images, texts)
        logits = scale * image @ text.T
        return torch.nn.functional.cross_entropy(logits, torch.arange(4))

    assert_gradient_is_the_losses(model, loss)


def test_the_language_model():
    torch.manual_seed(0)
    model = TokenformerLM(lm_config("tiny"))
    tokens = torch.randint(0, model.config.vocab_size, (2, 33))
    assert_gradient_is_the_losses(model, lambda: model(tokens[:, :-1], tokens[:, 1:])[1])
