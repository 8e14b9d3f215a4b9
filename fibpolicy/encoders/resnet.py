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


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map: 1x1 conv to ``num_keypoints`` maps, softmax over space, expected (x, y).

    Output (B, num_keypoints * 2) ordered x0, y0, x1, y1, ... with coordinates in [-1, 1] (x along width).
    """

    def __init__(self, in_channels: int, num_keypoints: int = 32, temperature: float = 1.0, learnable_temperature: bool = False) -> None:
        super().__init__()
        self.num_keypoints = num_keypoints
        self.keypoint_conv = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        temperature_tensor = torch.tensor([float(temperature)])
        if learnable_temperature:
            self.temperature = nn.Parameter(temperature_tensor)
        else:
            self.register_buffer("temperature", temperature_tensor)
        self.output_dim = 2 * num_keypoints

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.keypoint_conv(features)
        batch, kp, height, width = maps.shape
        attention = F.softmax(maps.reshape(batch, kp, height * width) / self.temperature, dim=-1)
        pos_y, pos_x = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height, device=maps.device, dtype=maps.dtype),
            torch.linspace(-1.0, 1.0, width, device=maps.device, dtype=maps.dtype),
            indexing="ij",
        )
        expected_x = (attention * pos_x.reshape(1, 1, -1)).sum(-1)
        expected_y = (attention * pos_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([expected_x, expected_y], dim=-1).reshape(batch, 2 * kp)


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
