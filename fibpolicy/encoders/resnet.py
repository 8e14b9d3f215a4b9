"""The Diffusion Policy reference image encoder: ResNet-18 trunk with GroupNorm and a spatial soft-max head.

torchvision ``resnet18(weights=None)`` without avgpool / fc, every ``BatchNorm2d(C)`` replaced by
``GroupNorm(C // 16, C)`` (EMA does not work with BatchNorm), then a 1x1 conv to 32 keypoint maps,
soft-argmax expected (x, y) per keypoint in [-1, 1] (64 values), ``Linear(64, 64)`` and ``ReLU``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .pooling import SpatialSoftmax

__all__ = ["ResNet18GNEncoder", "SpatialSoftmax", "create_resnet18_gn_encoder", "replace_batchnorm_with_groupnorm"]


def replace_batchnorm_with_groupnorm(module: nn.Module, group_size: int = 16) -> nn.Module:
    """Replace, in place, every ``BatchNorm2d(C)`` below ``module`` by ``GroupNorm(C // group_size, C)``."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            if channels % group_size:
                raise ValueError(f"{name}: {channels} channels are not divisible by group_size {group_size}")
            setattr(module, name, nn.GroupNorm(channels // group_size, channels))
        else:
            replace_batchnorm_with_groupnorm(child, group_size)
    return module


class ResNet18GNEncoder(nn.Module):
    """(B, in_chans, H, W) images -> (B, feature_dim) features; ``output_dim = feature_dim`` (64)."""

    def __init__(self, in_chans: int = 3, num_keypoints: int = 32, feature_dim: int = 64, group_size: int = 16) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        if in_chans != 3:
            resnet.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        trunk = nn.Sequential(*list(resnet.children())[:-2])  # drop avgpool and fc
        self.trunk = replace_batchnorm_with_groupnorm(trunk, group_size)
        self.pool = SpatialSoftmax(512, num_keypoints=num_keypoints)
        self.linear = nn.Linear(self.pool.output_dim, feature_dim)
        self.output_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        return F.relu(self.linear(self.pool(self.trunk(images))))


def create_resnet18_gn_encoder(
    *, img_size: Any = None, in_chans: int = 3, num_keypoints: int = 32, feature_dim: int = 64, group_size: int = 16
) -> ResNet18GNEncoder:
    """The reference per-camera encoder, with the factory keywords of ``create_feature_encoder``.

    ``img_size`` is accepted and unused: the trunk is fully convolutional and the spatial soft-max adapts.
    """
    return ResNet18GNEncoder(in_chans=in_chans, num_keypoints=num_keypoints, feature_dim=feature_dim, group_size=group_size)
