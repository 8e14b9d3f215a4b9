"""The feature interface shared by the policy and the classifiers: images -> vector, or -> token grid.

``create_feature_encoder(model_name, img_size=..., in_chans=..., pool=...)`` builds any timm-registered
model as a feature encoder: ``forward`` gives one vector per image (``output_dim`` wide), ``token_grid``
the final feature map as (B, C, H', W'). Pooling (``POOLS``):

- ``mean``: the mean of the patch tokens (of the map): what the Fibottention robot experiments used;
- ``cls``: the class token; ``both``: class token and mean, concatenated;
- ``map``: timm's attention pooling (one learned latent query attends over the tokens);
- ``spatial_softmax``: ``num_keypoints`` soft-argmax (x, y) positions over the token grid, as the
  ResNet reference's head does; unlike the mean it keeps where things are in the image.

ViTs pool with timm's own head (``global_pool``) where timm has the pooling, and give the grid as their
``forward_features`` patch tokens in raster order; convolutional models pool their ``forward_features`` map.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from . import vit as _vit  # noqa: F401  (registers the vit_fib_* models in timm)
from .pooling import SpatialSoftmax

__all__ = ["ConvFeatureEncoder", "POOLS", "ViTFeatureEncoder", "create_feature_encoder", "create_vit_encoder"]

POOLS = ("cls", "mean", "both", "map", "spatial_softmax")
# The timm ``global_pool`` each pooling builds the ViT with (spatial soft-max pools the grid itself).
_TIMM_POOL = {"cls": "token", "mean": "avg", "both": "token", "map": "map", "spatial_softmax": "avg"}


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")


class ViTFeatureEncoder(nn.Module):
    """Wraps a timm ViT: ``forward`` gives one feature vector per image, ``token_grid`` the patch tokens.

    ``pool`` is one of ``POOLS`` (see the module docstring); ``num_keypoints`` is used by
    ``spatial_softmax`` (``output_dim = 2 * num_keypoints``). The ViT's timm ``global_pool`` must match
    (``avg`` / ``token`` / ``map``), with the final norm on the tokens (no ``fc_norm``), as
    ``create_feature_encoder`` builds it.
    """

    def __init__(self, vit: VisionTransformer, pool: str = "mean", num_keypoints: int = 32) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool in ("cls", "both") and getattr(vit, "cls_token", None) is None:
            raise ValueError(f"pool={pool!r} needs a class token, but the ViT was built with class_token=False")
        if vit.global_pool != _TIMM_POOL[pool]:
            raise ValueError(f"pool={pool!r} needs a ViT with global_pool={_TIMM_POOL[pool]!r}, got {vit.global_pool!r}")
        self.vit = vit
        self.pool = pool
        self.embed_dim = vit.embed_dim
        self.keypoints = SpatialSoftmax(vit.embed_dim, num_keypoints) if pool == "spatial_softmax" else None
        if self.keypoints is not None:
            self.output_dim = self.keypoints.output_dim
        else:
            self.output_dim = vit.embed_dim * (2 if pool == "both" else 1)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patch tokens."""
        return self.vit.num_prefix_tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, output_dim) features."""
        _check_images(images)
        tokens = self.vit.forward_features(images)
        if self.keypoints is not None:
            return self.keypoints(self._grid(tokens, images))
        pooled = self.vit.forward_head(tokens, pre_logits=True)
        if self.pool != "both":
            return pooled
        return torch.cat([pooled, tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)

    def _grid(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        height, width = self.vit.patch_embed.dynamic_feat_size(images.shape[-2:]) if self.vit.dynamic_img_size \
            else self.vit.patch_embed.grid_size
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], height, width)

    def token_grid(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> normed patch tokens as a (B, embed_dim, H / patch, W / patch) grid."""
        _check_images(images)
        return self._grid(self.vit.forward_features(images), images)


class ConvFeatureEncoder(nn.Module):
    """Wraps a timm convolutional model whose ``forward_features`` gives a (B, C, H', W') map.

    ``pool="mean"`` is global average pooling of that map, ``"spatial_softmax"`` its soft-argmax keypoints.
    """

    def __init__(self, model: nn.Module, pool: str = "mean", num_keypoints: int = 32) -> None:
        super().__init__()
        if pool not in ("mean", "spatial_softmax"):
            raise ValueError(f"{type(model).__name__} has no class token: pool must be 'mean' or 'spatial_softmax', got {pool!r}")
        self.model = model
        self.pool = pool
        self.keypoints = SpatialSoftmax(int(model.num_features), num_keypoints) if pool == "spatial_softmax" else None
        self.output_dim = self.keypoints.output_dim if self.keypoints is not None else int(model.num_features)

    def token_grid(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> the final (B, num_features, H', W') feature map."""
        _check_images(images)
        grid = self.model.forward_features(images)
        if grid.dim() != 4:
            raise ValueError(f"{type(self.model).__name__}.forward_features gave {tuple(grid.shape)}, expected (B, C, H, W)")
        return grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, output_dim) pooled features."""
        grid = self.token_grid(images)
        return self.keypoints(grid) if self.keypoints is not None else grid.mean(dim=(2, 3))


def create_feature_encoder(
    model_name: str,
    *,
    img_size: int | tuple[int, int] = 84,
    in_chans: int = 3,
    pool: str = "mean",
    num_keypoints: int = 32,
    **kwargs: Any,
) -> nn.Module:
    """A feature encoder from any timm-registered model name (``kwargs`` are its constructor keywords).

    The policy's observation encoder calls this per camera with the crop size and channels of that
    camera; encoder configs give ``model_name`` and the rest (e.g. ``patch_size: 8``, ``attention: dense``).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if not timm.models.is_model(model_name):
        raise ValueError(f"{model_name!r} is not a timm-registered model (fibpolicy's own: {timm.list_models('*fib*')})")
    if pool == "map":
        kwargs.setdefault("global_pool", "map")  # timm builds its attention-pool head only at construction
    model = timm.create_model(model_name, img_size=img_size, in_chans=in_chans, num_classes=0, **kwargs)
    if isinstance(model, VisionTransformer):
        # Built with timm's default token pooling (final norm on the tokens, no fc_norm); the pooling the
        # encoder wants is then only a change of ``global_pool``.
        model.reset_classifier(0, _TIMM_POOL[pool])
        return ViTFeatureEncoder(model, pool=pool, num_keypoints=num_keypoints)
    return ConvFeatureEncoder(model, pool=pool, num_keypoints=num_keypoints)


def create_vit_encoder(
    model_name: str = "vit_fib_base_patch16_224",
    *,
    img_size: int | tuple[int, int] = 84,
    patch_size: int = 8,
    pool: str = "mean",
    in_chans: int = 3,
    **kwargs: Any,
) -> ViTFeatureEncoder:
    """A ViT feature encoder; defaults follow the Fibottention robot experiments (patch 8 on an 84-pixel crop).

    ``attention="dense"`` gives the dense twin of a ``vit_fib_*`` model.
    """
    encoder = create_feature_encoder(model_name, img_size=img_size, in_chans=in_chans, pool=pool, patch_size=patch_size, **kwargs)
    if not isinstance(encoder, ViTFeatureEncoder):
        raise ValueError(f"{model_name!r} is not a timm VisionTransformer")
    return encoder
