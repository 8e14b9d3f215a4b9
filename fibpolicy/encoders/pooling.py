"""Pooling a feature map into a vector that keeps *where* things are: spatial soft-max keypoints.

The mean of a feature map (or of a ViT's patch tokens) averages position away; the policy needs to
know where the block is. ``SpatialSoftmax`` (the Diffusion Policy / robomimic image head) turns the
map into ``num_keypoints`` soft-argmax positions instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SpatialSoftmax"]


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
