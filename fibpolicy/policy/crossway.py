"""Crossway Diffusion: a training-only decoder that reconstructs each observation step from the U-Net bottleneck.

The U-Net's bottleneck after its middle blocks is (B, C, T'); its first temporal token (B, C) is split
into ``n_obs_steps`` equal parts, one per observation step. Each part is reshaped to a (C / (4 To), 2, 2)
map and upsampled with residual 2-D blocks to every camera's full (uncropped) image size, and mapped
linearly to the low-dim observations. The loss is the diffusion loss plus ``reconstruction_weight``
(0.1) times the reconstruction MSE against the normalised observations. Inference never runs the
decoder, so acting costs what the plain policy costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..shape_meta import ShapeMeta
from .diffusion import DiffusionUnetPolicy

__all__ = ["CrosswayDecoder", "CrosswayDiffusionUnetPolicy"]


class _ResidualUp(nn.Module):
    """Nearest upsampling (×2, or to ``size``), then two 3x3 conv + GroupNorm + Mish with a residual path."""

    def __init__(self, dim_in: int, dim_out: int, n_groups: int = 8, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.size = size
        groups = math.gcd(n_groups, dim_out)
        self.block = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish(),
            nn.Conv2d(dim_out, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish(),
        )
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=self.size, scale_factor=2 if self.size is None else None, mode="nearest")
        return self.block(x) + self.skip(x)


class _ImageDecoder(nn.Module):
    """(N, c, 2, 2) -> (N, C, H, W): residual ×2 stages, the last of which upsamples straight to (H, W)."""

    def __init__(self, in_channels: int, image_shape: tuple[int, int, int], min_channels: int = 16) -> None:
        super().__init__()
        channels, height, width = image_shape
        # As many ×2 stages as reach (H, W) from 2x2, at least one; the last lands on the image size rather
        # than on the next power of two: a 96-px image decoded at 128 px and resized costs 1.8x the
        # full-size convolutions, the bulk of the decoder.
        n_stages = max(1, math.ceil(math.log2(max(height, width) / 2)))
        stages, dim = [], in_channels
        for i in range(n_stages):
            out = max(min_channels, dim // 2)
            stages.append(_ResidualUp(dim, out, size=(height, width) if i == n_stages - 1 else None))
            dim = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(dim, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))


class CrosswayDecoder(nn.Module):
    """Bottleneck token (B, bottleneck_dim) -> per obs step reconstructions of every camera and low-dim key."""

    def __init__(self, shape_meta: Mapping[str, Any] | ShapeMeta, bottleneck_dim: int, n_obs_steps: int) -> None:
        super().__init__()
        meta = ShapeMeta(shape_meta)
        if bottleneck_dim % (4 * n_obs_steps):
            raise ValueError(f"the U-Net bottleneck width {bottleneck_dim} must be divisible by 4 x n_obs_steps "
                             f"({4 * n_obs_steps}) to split it into per-step 2x2 maps")
        self.n_obs_steps = n_obs_steps
        self.step_dim = bottleneck_dim // n_obs_steps
        self.rgb_keys = list(meta.rgb_keys)
        self.low_dim_shapes = {k: meta.obs[k].shape for k in meta.low_dim_keys}
        self.images = nn.ModuleDict({k: _ImageDecoder(self.step_dim // 4, meta.obs[k].shape) for k in self.rgb_keys})
        low_dim = sum(int(torch.Size(s).numel()) for s in self.low_dim_shapes.values())
        self.low_dim = nn.Linear(self.step_dim, low_dim) if low_dim else None

    def forward(self, token: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, bottleneck_dim) -> {key: (B, n_obs_steps, *shape)} reconstructions."""
        batch = token.shape[0]
        steps = token.reshape(batch * self.n_obs_steps, self.step_dim)
        out = {}
        maps = steps.reshape(batch * self.n_obs_steps, self.step_dim // 4, 2, 2)
        for key, decoder in self.images.items():
            image = decoder(maps)
            out[key] = image.reshape(batch, self.n_obs_steps, *image.shape[1:])
        if self.low_dim is not None:
            flat = self.low_dim(steps)
            start = 0
            for key, shape in self.low_dim_shapes.items():
                size = int(torch.Size(shape).numel())
                out[key] = flat[:, start : start + size].reshape(batch, self.n_obs_steps, *shape)
                start += size
        return out

    def loss(self, token: torch.Tensor, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean over keys of the MSE between reconstructions and the normalised obs of the first steps."""
        recon = self(token)
        losses = [F.mse_loss(pred.float(), nobs[key][:, : self.n_obs_steps].float()) for key, pred in recon.items()]
        return torch.stack(losses).mean()


class CrosswayDiffusionUnetPolicy(DiffusionUnetPolicy):
    """``DiffusionUnetPolicy`` trained with the Crossway reconstruction loss (same inference).

    ``reconstruction_weight`` scales the reconstruction MSE (0.1 as Crossway Diffusion). All other
    arguments are ``DiffusionUnetPolicy``'s. ``compute_loss`` returns ``loss`` plus its two parts.
    """

    def __init__(self, *args: Any, reconstruction_weight: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if reconstruction_weight < 0:
            raise ValueError(f"reconstruction_weight must be >= 0, got {reconstruction_weight}")
        self.reconstruction_weight = float(reconstruction_weight)
        self.decoder = CrosswayDecoder(self.shape_meta, self.model.down_dims[-1], self.n_obs_steps)

    def compute_loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Diffusion loss + weight x reconstruction loss, and the two parts (for the logs)."""
        diffusion, nobs, bottleneck = self.diffusion_loss(batch, return_bottleneck=True)
        reconstruction = self.decoder.loss(bottleneck[:, :, 0], nobs)
        return {"loss": diffusion + self.reconstruction_weight * reconstruction,
                "diffusion_loss": diffusion.detach(), "reconstruction_loss": reconstruction.detach()}
