"""Image Tokenformer: a ViT whose every projection is a Pattention, registered with timm.

ViT-style (docs/design.md, "The towers"): conv patch embedding, class token, learned position
embedding (resampled for other image sizes), Tokenformer blocks, learnable final LayerNorm,
``nn.Linear`` head.
The model exposes timm's model API, so every timm tool (``create_model``, ``features_only``,
``forward_intermediates``, optimizers with ``no_weight_decay``, layer decay) works unchanged.

    import tokenformer_mm  # or: import tokenformer_mm.vision
    model = timm.create_model("tokenformer_base_patch16_224", num_classes=10)
"""

from typing import Any

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn

from tokenformer_mm.block import TokenformerBlock
from tokenformer_mm.initialization import discarded_rng, reset_submodules

GLOBAL_POOLS = ("token", "avg", "")


class TokenformerViT(nn.Module):
    """Vision Tokenformer (paper Table 9): a ViT with Pattention in place of every linear layer.

    Args:
        img_size: input image size.
        patch_size: patch size of the conv patch embedding.
        in_chans: input channels.
        num_classes: classes of the head; 0 gives no head (``forward`` returns pooled features).
        global_pool: ``"token"`` (class token), ``"avg"`` (mean of patch tokens) or ``""`` (none).
        embed_dim: token width.
        depth: number of Tokenformer blocks.
        num_heads: attention heads.
        qkv_tokens: parameter tokens of each q/k/v Pattention.
        proj_tokens: parameter tokens of the attention output Pattention (default ``qkv_tokens``).
        ffn_tokens: parameter tokens of the FFN Pattention.
        norm: the Pattention ``theta`` (``l2_norm_gelu``, ``gelu_l2_norm`` or ``softmax``).
        dynamic_img_size: accept any image size, resampling the position embedding on the fly.
        drop_rate: dropout before the head.
        pos_drop_rate: dropout after the position embedding.
        attn_drop_rate: dropout on the token-token attention.
        token_drop_rate: dropout on every Pattention's ``theta(s)``.
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks.
        key_init: how the Pattention key tokens start: ``"fan_in"`` (default),
            ``"official"`` (the paper's N(0, 0.02)) or a std.
        init_values: LayerScale (CaiT; timm's ViT argument of the same name): each residual
            branch times a learnable per-channel scale starting at this value. The default 0.1
            departs from the paper (which has none): under timm's recipes with a short
            warm-up the paper's model can stay near chance where a ViT learns, and with it
            it does not (docs/recipes.md). 0 gives the paper's block (timm drops None kwargs).
        parametrization: ``"standard"``, the paper's math, or ``"mup"``: the value tokens
            scaled by ``base / n`` (``tokenformer_mm.block``), so a learning rate tuned at one
            token count holds at others and after growth.
        device, dtype: where and in which dtype parameters are created (timm's factory kwargs;
            ``device="meta"`` builds the structure without memory).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        qkv_tokens: int = 768,
        proj_tokens: int | None = None,
        ffn_tokens: int = 3072,
        norm: str = "l2_norm_gelu",
        dynamic_img_size: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        token_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        key_init: str | float = "fan_in",
        init_values: float | None = 0.1,
        parametrization: str = "standard",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        _check_global_pool(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        with discarded_rng():  # init_weights() below draws every initial value
            self.patch_embed = PatchEmbed(
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans,
                embed_dim=embed_dim,
                strict_img_size=not dynamic_img_size,
                output_fmt="NHWC" if dynamic_img_size else None,  # None: flattened (B, N, C)
                **dd,
            )
            num_patches = self.patch_embed.num_patches
            reduction = self.patch_embed.feat_ratio()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
            self.pos_embed = nn.Parameter(
                torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim, **dd)
            )
            self.pos_drop = nn.Dropout(pos_drop_rate)
            drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # 0 -> rate
            self.blocks = nn.Sequential(
                *[
                    TokenformerBlock(
                        embed_dim,
                        num_heads,
                        qkv_tokens,
                        proj_tokens or qkv_tokens,
                        ffn_tokens,
                        norm=norm,
                        token_dropout=token_drop_rate,
                        attn_dropout=attn_drop_rate,
                        drop_path=drop_path[i],
                        depth=depth,
                        key_init=key_init,
                        init_values=init_values,
                        parametrization=parametrization,
                        **dd,
                    )
                    for i in range(depth)
                ]
            )
            self.feature_info = [
                dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=reduction)
                for i in range(depth)
            ]
            self.norm = nn.LayerNorm(embed_dim, eps=1e-5, **dd)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = (
                nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
            )
        self.init_weights()

    def init_weights(self) -> None:
        """Every initial value (the eager constructor's last step; after meta-device
        construction and ``to_empty``, the one that makes the same model): each submodule's
        own init (Pattention, patch embedding, norm), then ViT inits for the embeddings and head.
        """
        reset_submodules(self)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # --- timm model API -------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            _check_global_pool(global_pool)
            self.global_pool = global_pool
        dd = {"device": self.pos_embed.device, "dtype": self.pos_embed.dtype}
        self.head = (
            nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        )
        self.head.train(self.training)  # the new head joins the model's mode...
        self.head.requires_grad_(self.pos_embed.requires_grad)  # ...and a frozen model stays frozen

    @torch.jit.ignore
    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
    ) -> None:
        """Change the input resolution (and patch size), resampling the position embedding."""
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        if self.patch_embed.grid_size != old_grid:
            self.pos_embed = nn.Parameter(
                resample_abs_pos_embed(
                    self.pos_embed.detach(),
                    new_size=list(self.patch_embed.grid_size),
                    old_size=list(old_grid),
                    num_prefix_tokens=self.num_prefix_tokens,
                ),
                requires_grad=self.pos_embed.requires_grad,  # a frozen model stays frozen
            )

    # --- forward --------------------------------------------------------------------------

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            if torch.jit.is_tracing():  # a trace would keep the example's grid: wrong elsewhere
                raise ValueError(
                    "dynamic_img_size=True exports with torch.onnx.export(dynamo=True) or "
                    "torch.export, not a TorchScript trace (torch.onnx.export(dynamo=False), "
                    "torch.jit.trace); for one image size build it with dynamic_img_size=False"
                )
            B, H, W, C = x.shape  # patch embedding output is NHWC in dynamic mode
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=[H, W],
                old_size=list(self.patch_embed.grid_size),
                num_prefix_tokens=self.num_prefix_tokens,
            )
            x = x.view(B, -1, C)
        else:
            pos_embed = self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + pos_embed)  # (B, 1 + H*W, C)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, 0]
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features of selected blocks, as timm's ViT returns them.

        Args:
            x: images (B, C, H, W).
            indices: the last n blocks if int, all if None, else these block indices.
            return_prefix_tokens: pair each map with its class token.
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested block.
            output_fmt: ``"NCHW"`` feature maps or ``"NLC"`` token sequences.
            intermediates_only: return only the intermediates, not the final features.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x = self._pos_embed(self.patch_embed(x))
        blocks = (
            self.blocks
            if torch.jit.is_scripting() or not stop_early
            else (self.blocks[: max_index + 1])
        )
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix_tokens = [y[:, : self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens :] for y in intermediates]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [
                y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates
            ]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks (and optionally norm and head) past the last requested intermediate."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def _check_global_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
