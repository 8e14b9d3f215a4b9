"""FCViT ("A Close Look at Spatial Modeling: From Attention to Convolution", Ma et al., arXiv 2212.12552).

A hierarchical MetaFormer on (B, C, H, W) maps, written from the facts of the public release
(``ma-xu/FCViT``, ``models/fcvit.py``) collected in ``shared/specs/fcvit_and_sparse_patterns.md``:

- stem: 7 x 7 convolution (stride 4 at 224 px, see *Small images* below) + BatchNorm; between the four
  stages a 3 x 3 stride-2 convolution + BatchNorm; no class token, no position embedding;
- block: ``x + DropPath(gamma1 * TokenMixer(GN(x)))`` then ``x + DropPath(gamma2 * ConvMLP(GN(x)))``
  with GroupNorm(1) (a LayerNorm over C, H and W) and layer scales initialised to 1e-5;
- token mixer: ``x += GC1(x)``; ``x = GELU(PW1(DW1(x)))``; ``x += GC2(x)``; ``x = GELU(PW2(DW2(x)))``,
  DW a depth-wise 11 x 11 convolution, PW a 1 x 1 convolution C -> max(C / 8, 16), GELU, 1 x 1 back to C;
- global context GC: per group of C / 8 channels (8 groups) the similarity of each token to the mean
  token, normalised per sample over all groups and tokens (unbiased std) with a per-group affine,
  times a channel vector from the mean token through the competition-driven bottleneck
  (Linear C -> 2 C / 8, maximum of the two halves, Linear C / 8 -> C): a rank-1 map per group;
- ConvMLP: 1 x 1 C -> rC, depth-wise 3 x 3, GELU, dropout, 1 x 1 rC -> C, dropout (r = 8, 8, 4, 4);
- head: GroupNorm(1) on the last map, global average pool, Linear.

Module and parameter names follow the release (``patch_embed``, ``network.{0..6}``, ``token_mixer.gc1``,
``dw1``, ``fc1``, ..., ``layer_scale_1``, ``norm``, ``head``), so its checkpoints' keys should load
(not checked here: the checkpoints cannot be downloaded in this project).

Small images. At 224 px the stride-4 stem gives 56/28/14/7 maps. On the 32-96 px images of this project
(digits, CIFAR, the 84 px policy crops) that would leave 8 x 8 -> 1 x 1 maps at 32 px, so the stem's
stride is chosen from ``img_size``: 4 from 112 px up, 2 from 48 px (84 -> 42/21/11/6, 96 ->
48/24/12/6), 1 below (32 -> 32/16/8/4). The stem keeps its 7 x 7 kernel and padding 3, so every
variant has the same parameters at every input size (the pinned counts hold, and the release's
weights keep their shapes); ``stem_stride=`` overrides the choice. At 32 px with stride 1 a forward
costs about the MACs of ViT-Ti with patch 4 (64 tokens), and at 84 px with stride 2 about those of
ViT-Ti with patch 8 (100 tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

__all__ = [
    "FCVIT_CONFIGS",
    "FCViT",
    "GlobalContext",
    "TokenMixer",
    "fcvit_b12",
    "fcvit_b24",
    "fcvit_b48",
    "fcvit_tiny",
    "stem_stride_for",
]

# depths, dims and the drop-path rate of the release's training commands (README) per model.
FCVIT_CONFIGS: dict[str, dict[str, Any]] = {
    "fcvit_tiny": dict(depths=(3, 3, 5, 2), dims=(32, 64, 160, 320), drop_path_rate=0.1),
    "fcvit_b12": dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512), drop_path_rate=0.1),
    "fcvit_b24": dict(depths=(4, 4, 12, 4), dims=(64, 128, 320, 512), drop_path_rate=0.1),
    "fcvit_b48": dict(depths=(8, 8, 24, 8), dims=(64, 128, 320, 512), drop_path_rate=0.2),
}
MLP_RATIOS = (8, 8, 4, 4)
GC_GROUPS = 8
GC_REDUCTION = 8
DW_KERNEL = 11
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def stem_stride_for(img_size: int | tuple[int, int] | None) -> int:
    """The stem's stride for an input size: 4 from 112 px (the release at 224), 2 from 48 px, else 1."""
    if img_size is None:
        return 4
    side = min(img_size) if isinstance(img_size, (tuple, list)) else int(img_size)
    return 4 if side >= 112 else 2 if side >= 48 else 1


def _norm(dim: int) -> nn.GroupNorm:
    # GroupNorm with one group: statistics over (C, H, W), not per token.
    return nn.GroupNorm(1, dim, eps=1e-5)


class ConvEmbed(nn.Module):
    """Overlapping patch embedding: a k x k convolution with padding k // 2, then BatchNorm."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class GlobalContext(nn.Module):
    """FCViT's global context: token-global similarity per group times a bottlenecked channel vector."""

    def __init__(self, dim: int, groups: int = GC_GROUPS, reduction: int = GC_REDUCTION) -> None:
        super().__init__()
        if dim % groups or dim % reduction:
            raise ValueError(f"GlobalContext needs channels ({dim}) divisible by {groups} groups and by {reduction}")
        self.groups = groups
        self.scale = (dim // groups) ** -0.5
        self.eps = 1e-5
        # Competition-driven bottleneck ("Compete to compute"): a 2-piece maxout between two Linears.
        self.fc1 = nn.Linear(dim, 2 * dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim)
        self.rescale_weight = nn.Parameter(torch.ones(groups))
        self.rescale_bias = nn.Parameter(torch.zeros(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the (B, C, H, W) context to add to ``x``."""
        b, c, h, w = x.shape
        tokens = x.reshape(b, self.groups, c // self.groups, h * w)
        mean_token = x.mean(dim=(2, 3))  # (B, C)
        sim = (tokens * mean_token.view(b, self.groups, -1, 1)).sum(dim=2) * self.scale  # (B, groups, N)
        std, mean = torch.std_mean(sim, dim=(1, 2), keepdim=True)  # unbiased, over groups and tokens jointly
        sim = (sim - mean) / (std + self.eps)
        sim = sim * self.rescale_weight.view(1, -1, 1) + self.rescale_bias.view(1, -1, 1)
        channel = self.fc1(mean_token).view(b, 2, -1).amax(dim=1)
        channel = self.fc2(channel)  # (B, C)
        out = sim.view(b, self.groups, 1, h * w) * channel.view(b, self.groups, -1, 1)
        return out.reshape(b, c, h, w)


def _pointwise_pair(dim: int, act: nn.Module) -> nn.Sequential:
    hidden = max(dim // 8, 16)
    return nn.Sequential(nn.Conv2d(dim, hidden, 1), act, nn.Conv2d(hidden, dim, 1))


class TokenMixer(nn.Module):
    """Two rounds of (global context added, depth-wise 11 x 11, point-wise pair, GELU)."""

    def __init__(self, dim: int, kernel_size: int = DW_KERNEL) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.gc1 = GlobalContext(dim)
        self.dw1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fc1 = _pointwise_pair(dim, self.act)
        self.gc2 = GlobalContext(dim)
        self.dw2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fc2 = _pointwise_pair(dim, self.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gc1(x)
        x = self.act(self.fc1(self.dw1(x)))
        x = x + self.gc2(x)
        return self.act(self.fc2(self.dw2(x)))


class ChannelMixer(nn.Module):
    """ConvMLP: 1 x 1 up, depth-wise 3 x 3, GELU, dropout, 1 x 1 down, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class FCViTBlock(nn.Module):
    """MetaFormer block: token mixer and ConvMLP, each pre-normed, layer-scaled and drop-pathed."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = _norm(dim)
        self.token_mixer = TokenMixer(dim)
        self.norm2 = _norm(dim)
        self.channel_mixer = ChannelMixer(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(layer_scale_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1.view(1, -1, 1, 1) * self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2.view(1, -1, 1, 1) * self.channel_mixer(self.norm2(x)))


class FCViT(nn.Module):
    """FCViT classifier / backbone with timm's CNN interface.

    ``forward_features`` gives the final stage's normed (B, C, H', W') map, ``forward_head`` pools it
    (``global_pool``, average by default) and applies the classifier; ``num_classes=0`` leaves the
    pooled features. ``img_size`` only chooses the stem's stride (see the module docstring);
    ``patch_size`` is accepted and ignored (a ViT geometry keyword that task configs pass to every
    backbone; FCViT's map sizes follow from the stem). ``global_pool="token"`` (the ViT task default)
    means average pooling: FCViT has no class token. ``channels_last`` (default True) runs the
    activations in channels-last memory order (faster depth-wise convolutions; same function).
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 5, 2),
        dims: tuple[int, ...] = (32, 64, 160, 320),
        mlp_ratios: tuple[float, ...] = MLP_RATIOS,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        img_size: int | tuple[int, int] | None = 224,
        stem_stride: int | None = None,
        patch_size: int | None = None,  # noqa: ARG002 - see the class docstring
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-5,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if not (len(depths) == len(dims) == len(mlp_ratios)):
            raise ValueError(f"depths {depths}, dims {dims} and mlp_ratios {mlp_ratios} must have one entry per stage")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.dims = tuple(dims)
        self.depths = tuple(depths)
        self.stem_stride = stem_stride or stem_stride_for(img_size)
        if self.stem_stride < 1:
            raise ValueError(f"stem_stride must be >= 1, got {self.stem_stride}")
        self.patch_embed = ConvEmbed(in_chans, dims[0], 7, self.stem_stride)
        total = sum(depths)
        network: list[nn.Module] = []
        self.stage_indices: list[int] = []
        self.feature_info: list[dict[str, Any]] = []
        reduction = self.stem_stride
        done = 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i:
                network.append(ConvEmbed(dims[i - 1], dim, 3, 2))
                reduction *= 2
            rates = [drop_path_rate * (done + j) / max(total - 1, 1) for j in range(depth)]
            network.append(nn.Sequential(*(FCViTBlock(dim, mlp_ratios[i], drop_rate, r, layer_scale_init) for r in rates)))
            self.stage_indices.append(len(network) - 1)
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"network.{len(network) - 1}"))
            done += depth
        self.network = nn.ModuleList(network)
        self.norm = _norm(dims[-1])
        self.global_pool = self._pool(global_pool)
        self.num_features = self.head_hidden_size = dims[-1] * self.global_pool.feat_mult()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _pool(global_pool: str) -> SelectAdaptivePool2d:
        pool = "avg" if global_pool == "token" else global_pool
        if pool not in POOL_TYPES:
            raise ValueError(f"global_pool must be one of {POOL_TYPES} (or 'token', read as 'avg'), got {global_pool!r}")
        return SelectAdaptivePool2d(pool_type=pool, flatten=True)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The release's init: convolutions normal(0, sqrt(2 / fan_out)), Linears truncated normal 0.02.
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """No parameter is excluded by name (the optimiser factory already skips norms and biases)."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer decay: the stem, then each stage (with the downsample before it)."""
        return dict(stem=r"^patch_embed", blocks=[(r"^network\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classifier layer."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier for ``num_classes`` (0: none), optionally with another pooling."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._pool(global_pool)
            self.num_features = self.head_hidden_size = self.dims[-1] * self.global_pool.feat_mult()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        # Activations in channels-last order: PyTorch's depth-wise convolutions (the 11 x 11 ones above
        # all) run about twice as fast that way on CPU, backward included. Weights keep the default
        # layout (safetensors stores contiguous tensors only); results are the same up to rounding.
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) images -> the final stage's normed (B, C, H', W') map (contiguous)."""
        x = self.patch_embed(self._layout(x))
        for module in self.network:
            x = module(x)
        return self.norm(x).contiguous()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a (B, C, H', W') map, then classify (``pre_logits=True``: the pooled features)."""
        x = self.global_pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) images -> (B, num_classes) logits (pooled features when ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs, timm-style: ``indices`` an int (the last n stages) or stage indices.

        ``norm=True`` applies the final GroupNorm to the last stage's output (the other stages have no norm).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"FCViT gives NCHW maps only, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stage_indices), indices)
        last = len(self.stage_indices) - 1
        intermediates = []
        x = self.patch_embed(self._layout(x))
        stage = -1
        for i, module in enumerate(self.network):
            x = module(x)
            if i in self.stage_indices:
                stage += 1
                if stage in take:
                    intermediates.append((self.norm(x) if norm and stage == last else x).contiguous())
                if stop_early and stage >= max_index:
                    break
        if intermediates_only:
            return intermediates
        if stage == last:
            x = self.norm(x)
        return x.contiguous(), intermediates


def _cfg(crop_pct: float) -> dict[str, Any]:
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=crop_pct,
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj", classifier="head",
    )


# The release's weights are published on GitHub; none can be fetched here (url empty).
default_cfgs = generate_default_cfgs({
    "fcvit_tiny": _cfg(0.9), "fcvit_b12": _cfg(0.9), "fcvit_b24": _cfg(0.95), "fcvit_b48": _cfg(0.95),
})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> FCViT:
    if pretrained:
        raise ValueError(
            f"no weights can be downloaded for {variant!r} here; build it with pretrained=False and load the "
            "release's checkpoint with model.load_state_dict(...) (module names follow the release)"
        )
    cfg = FCVIT_CONFIGS[variant]
    return build_model_with_cfg(
        FCViT, variant, pretrained=False, depths=cfg["depths"], dims=cfg["dims"], feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )


@register_model
def fcvit_tiny(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-tiny: depths 3/3/5/2, widths 32/64/160/320 (4,784,752 parameters at 1000 classes)."""
    return _create("fcvit_tiny", pretrained, **kwargs)


@register_model
def fcvit_b12(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-B12: depths 2/2/6/2, widths 64/128/320/512 (14,701,832 parameters at 1000 classes)."""
    return _create("fcvit_b12", pretrained, **kwargs)


@register_model
def fcvit_b24(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-B24: depths 4/4/12/4, widths 64/128/320/512 (26,960,232 parameters at 1000 classes)."""
    return _create("fcvit_b24", pretrained, **kwargs)


@register_model
def fcvit_b48(pretrained: bool = False, **kwargs: Any) -> FCViT:
    """FCViT-B48: depths 8/8/24/8, widths 64/128/320/512 (51,477,032 parameters at 1000 classes)."""
    return _create("fcvit_b48", pretrained, **kwargs)
