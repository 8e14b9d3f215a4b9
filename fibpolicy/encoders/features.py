"""The feature interface shared by the policy and the classifiers: images -> vector, or -> token grid."""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from . import vit as _vit  # noqa: F401  (registers the vit_fib_* models in timm)

__all__ = ["POOLS", "ViTFeatureEncoder", "create_vit_encoder"]

POOLS = ("cls", "mean", "both")


class ViTFeatureEncoder(nn.Module):
    """Wraps a timm ViT: ``forward`` gives one feature vector per image, ``token_grid`` the patch tokens.

    ``pool="mean"`` averages the patch tokens after the final norm (what the Fibottention robot
    experiments used), ``"cls"`` takes the class token, ``"both"`` concatenates the two.
    """

    def __init__(self, vit: VisionTransformer, pool: str = "mean") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool in ("cls", "both") and getattr(vit, "cls_token", None) is None:
            raise ValueError(f"pool={pool!r} needs a class token, but the ViT was built with class_token=False")
        self.vit = vit
        self.pool = pool
        self.embed_dim = vit.embed_dim
        self.output_dim = vit.embed_dim * (2 if pool == "both" else 1)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patch tokens."""
        return self.vit.num_prefix_tokens

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, (B, prefix + patches, C)."""
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        return self.vit.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, output_dim) features."""
        tokens = self.forward_tokens(images)
        if self.pool == "cls":
            return tokens[:, 0]
        mean = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return mean if self.pool == "mean" else torch.cat([tokens[:, 0], mean], dim=-1)

    def token_grid(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> patch tokens laid out as a (B, embed_dim, H / patch, W / patch) grid."""
        tokens = self.forward_tokens(images)[:, self.num_prefix_tokens :]
        grid_h, grid_w = self.vit.patch_embed.dynamic_feat_size(images.shape[-2:])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, grid_h, grid_w)


def create_vit_encoder(
    model_name: str = "vit_fib_base_patch16_224",
    *,
    img_size: int = 84,
    patch_size: int = 8,
    pool: str = "mean",
    in_chans: int = 3,
    **kwargs: Any,
) -> ViTFeatureEncoder:
    """A feature encoder from any timm ViT name; ``attention="dense"`` gives the dense twin of a ``vit_fib_*``.

    Defaults follow the Fibottention robot experiments (patch 8 on an 84-pixel crop, mean of patch tokens).
    """
    vit = timm.create_model(
        model_name, img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
        global_pool="token", **kwargs,
    )
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{model_name!r} is a {type(vit).__name__}, expected a timm VisionTransformer")
    return ViTFeatureEncoder(vit, pool=pool)
