"""1-D temporal conditional U-Net: the Diffusion Policy CNN denoiser, layer for layer.

Conditioning vector = MLP(sinusoidal(step)) concatenated with the global observation vector; every residual
block applies it with FiLM (``Mish -> Linear(cond, 2C)`` giving a per-channel scale and bias after the first
conv). Like the reference, the skip of the first (full-resolution) level is computed but not used by the
up path, and every up level upsamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["ConditionalResidualBlock1D", "ConditionalUnet1D", "Conv1dBlock", "SinusoidalPosEmb"]


class SinusoidalPosEmb(nn.Module):
    """(B,) diffusion steps -> (B, dim) [sin, cos] features with frequencies 10000^(-i / (dim/2 - 1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        angles = x.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    """Conv1d (same padding) -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two ``Conv1dBlock``; FiLM (or additive bias) from the conditioning vector after the first; 1x1 residual."""

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int = 5, n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
            Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
        ])
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        self.cond_encoder = nn.Sequential(
            nn.Mish(), nn.Linear(cond_dim, out_channels * 2 if cond_predict_scale else out_channels)
        )
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        embed = self.cond_encoder(cond).unsqueeze(-1)
        if self.cond_predict_scale:
            embed = embed.reshape(embed.shape[0], 2, self.out_channels, 1)
            out = embed[:, 0] * out + embed[:, 1]
        else:
            out = out + embed
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser: (B, T, input_dim) noisy actions, (B,) steps, (B, global_cond_dim) obs vector -> (B, T, input_dim).

    ``T`` must be divisible by ``2 ** (len(down_dims) - 1)`` (16 -> 8 -> 4 for the reference).
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int | None = None,
        diffusion_step_embed_dim: int = 128,
        down_dims: Sequence[int] = (512, 1024, 2048),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("down_dims must have at least one level")
        for d in down_dims:
            if d % n_groups:
                raise ValueError(f"channel count {d} in down_dims is not divisible by n_groups={n_groups}")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim or 0
        self.down_dims = down_dims
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed)
        )
        cond_dim = dsed + self.global_cond_dim
        block = dict(cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups, cond_predict_scale=cond_predict_scale)
        all_dims = [input_dim, *down_dims]
        in_out = list(zip(all_dims[:-1], all_dims[1:]))

        self.down_modules = nn.ModuleList()
        for index, (dim_in, dim_out) in enumerate(in_out):
            is_last = index == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                ConditionalResidualBlock1D(dim_in, dim_out, **block),
                ConditionalResidualBlock1D(dim_out, dim_out, **block),
                nn.Conv1d(dim_out, dim_out, 3, stride=2, padding=1) if not is_last else nn.Identity(),
            ]))
        mid = all_dims[-1]
        self.mid_modules = nn.ModuleList([
            ConditionalResidualBlock1D(mid, mid, **block),
            ConditionalResidualBlock1D(mid, mid, **block),
        ])
        self.up_modules = nn.ModuleList()
        for dim_in, dim_out in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([
                ConditionalResidualBlock1D(dim_out * 2, dim_in, **block),
                ConditionalResidualBlock1D(dim_in, dim_in, **block),
                nn.ConvTranspose1d(dim_in, dim_in, 4, stride=2, padding=1),
            ]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    @property
    def horizon_multiple(self) -> int:
        return 2 ** (len(self.down_dims) - 1)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, global_cond: torch.Tensor | None = None,
        return_bottleneck: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T, input_dim) noisy sample -> (B, T, input_dim); with ``return_bottleneck`` also the
        (B, down_dims[-1], T / horizon_multiple) features after the middle blocks."""
        if sample.dim() != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"expected sample (B, T, {self.input_dim}), got {tuple(sample.shape)}")
        if sample.shape[1] % self.horizon_multiple:
            raise ValueError(f"sequence length {sample.shape[1]} is not divisible by {self.horizon_multiple}")
        batch = sample.shape[0]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch)
        # the sinusoid is float32; the MLP after it runs in the weights' dtype (bf16 inference copies)
        embed, mlp = self.diffusion_step_encoder[0], self.diffusion_step_encoder[1:]
        cond = mlp(embed(timesteps).to(self.diffusion_step_encoder[1].weight.dtype)).to(sample.dtype)
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (batch, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"expected global_cond of shape ({batch}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)
        elif global_cond is not None:
            raise ValueError("global_cond given to a U-Net built with global_cond_dim=None")

        x = sample.transpose(1, 2)
        skips = []
        for resnet, resnet2, downsample in self.down_modules:
            x = resnet2(resnet(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        bottleneck = x
        for resnet, resnet2, upsample in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(resnet2(resnet(x, cond), cond))
        out = self.final_conv(x).transpose(1, 2)
        return (out, bottleneck) if return_bottleneck else out
