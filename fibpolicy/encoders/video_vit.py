"""Video ViT with divided space-time attention (TimeSformer), built from timm's ViT and its blocks.

Input: (B, C, T, H, W) clips. Each frame is split into N patches by the image ViT's patch embedding and
gets the image ViT's learned spatial position embedding plus a learned temporal embedding for its frame;
one class token is shared by the clip. Every block is a timm ``Block`` (same parameter names:
``norm1``, ``attn``, ``ls1``, ``norm2``, ``mlp``, ``ls2``) with a temporal attention in front of it:

1. temporal: at each patch position, dense attention over the T frames
   (``temporal_norm`` -> ``temporal_attn`` -> ``temporal_fc``, residual);
2. spatial: within each frame, attention over that frame's N patches plus a copy of the class token
   (the block's ``attn``: Fibottention, or dense for the twin); the T class-token outputs are averaged;
3. the block's MLP over all tokens.

``temporal_fc`` starts at zero (the temporal attention enters as the identity, as in TimeSformer). The
temporal embedding is the only cue to frame order (temporal attention is permutation-equivariant and
the class token averages the frames), so a freshly built model draws it from a truncated normal with
``time_embed_std`` = 0.5 by default. At the position embedding's 0.02 it is tiny beside the patch
tokens: a moving-shapes run from scratch sat for 7+ epochs at the direction-blind solution (axis and
speed right, left/right and up/down at chance), while at 0.5 it learnt the sign of the motion within 5
epochs (docs/classification.md). At zero, a clip and its reversal are the same input.
:func:`load_image_weights` zeroes it instead, so that a video ViT started from an image ViT computes,
on a clip of T identical frames, exactly what the image ViT computes on that frame. ``import
fibpolicy`` registers
``vit_fib_video_{tiny,small,base}_patch16_224`` in timm (``attention="dense"`` for the dense twin).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, resample_abs_pos_embed, resample_patch_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer

from .vit import ATTENTION_KINDS, FIB_OPTIONS, VIT_SIZES, fibottentionize

__all__ = [
    "DividedSpaceTimeBlock",
    "VideoVisionTransformer",
    "load_image_weights",
    "read_weights",
    "video_variant",
    "video_vision_transformer",
    "vit_fib_video_base_patch16_224",
    "vit_fib_video_small_patch16_224",
    "vit_fib_video_tiny_patch16_224",
]


class DividedSpaceTimeBlock(Block):
    """A timm ViT block with a temporal attention in front; its ``attn`` is the per-frame spatial attention."""

    def __init__(self, dim: int, num_heads: int, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        norm_layer = kwargs.get("norm_layer") or nn.LayerNorm
        self.temporal_norm = norm_layer(dim, **dd)
        self.temporal_attn = Attention(
            dim, num_heads=num_heads, qkv_bias=kwargs.get("qkv_bias", False), qk_norm=kwargs.get("qk_norm", False),
            proj_bias=kwargs.get("proj_bias", True), attn_drop=kwargs.get("attn_drop", 0.0),
            proj_drop=kwargs.get("proj_drop", 0.0), norm_layer=norm_layer, **dd,
        )
        self.temporal_fc = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        """``x`` is (B, 1 + T*N, C): the class token, then frame 0's N patches, frame 1's, ..."""
        B, L, C = x.shape
        T = num_frames
        N = (L - 1) // T
        if 1 + T * N != L:
            raise ValueError(f"{L} tokens is not 1 + {T} frames x N patches")
        cls, patches = x[:, :1], x[:, 1:]

        # Temporal: the same patch position across frames attends densely.
        xt = patches.reshape(B, T, N, C).transpose(1, 2).reshape(B * N, T, C)
        xt = self.temporal_fc(self.temporal_attn(self.temporal_norm(xt)))
        patches = patches + self.drop_path1(xt.reshape(B, N, T, C).transpose(1, 2).reshape(B, T * N, C))

        # Spatial: each frame's patches with its own copy of the class token, the block's attention.
        xs = torch.cat([cls.expand(B, T, C).reshape(B * T, 1, C), patches.reshape(B * T, N, C)], dim=1)
        res = self.ls1(self.attn(self.norm1(xs)))
        res_cls = res[:, 0].reshape(B, T, C).mean(dim=1, keepdim=True)
        res_patches = res[:, 1:].reshape(B, T * N, C)
        x = torch.cat([cls, patches], dim=1) + self.drop_path1(torch.cat([res_cls, res_patches], dim=1))

        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VideoVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` with divided space-time blocks and a temporal embedding.

    Takes every ``VisionTransformer`` keyword (sizes, drop rates, ``global_pool`` "token" or "avg", ...)
    plus ``num_frames`` (length of the learned temporal embedding; other clip lengths interpolate it) and
    ``time_embed_std`` (the scale it is drawn at; see the module docstring for why 0.5, not 0.02).
    """

    def __init__(self, *, num_frames: int = 8, time_embed_std: float = 0.5, **kwargs: Any) -> None:
        unsupported = {
            key: kwargs[key] for key, ok in (
                ("class_token", True), ("reg_tokens", 0), ("no_embed_class", False), ("dynamic_img_size", False),
                ("pos_embed", "learn"), ("pre_norm", False),
            ) if key in kwargs and kwargs[key] != ok
        }
        if unsupported:
            raise ValueError(f"VideoVisionTransformer does not support {unsupported}")
        if kwargs.get("global_pool", "token") not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {kwargs['global_pool']!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not time_embed_std >= 0:
            raise ValueError(f"time_embed_std must be >= 0, got {time_embed_std}")
        super().__init__(block_fn=DividedSpaceTimeBlock, **kwargs)
        self.num_frames = int(num_frames)
        self.time_embed = nn.Parameter(torch.zeros(1, self.num_frames, self.embed_dim))
        if time_embed_std > 0:
            trunc_normal_(self.time_embed, std=time_embed_std)
        zero_temporal_projections(self, time_embed=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Embeddings and the class token are not weight-decayed."""
        return super().no_weight_decay() | {"time_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer decay: the temporal embedding belongs to the stem."""
        return dict(
            stem=r"^cls_token|pos_embed|time_embed|patch_embed|norm_pre",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def _time_embed(self, num_frames: int) -> torch.Tensor:
        if num_frames == self.num_frames:
            return self.time_embed
        # A clip length other than the trained one: nearest-neighbour resampling, as TimeSformer does.
        return F.interpolate(self.time_embed.transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, T, H, W) clips -> all tokens after the final norm, (B, 1 + T*N, embed_dim)."""
        if x.dim() != 5:
            raise ValueError(f"expected clips of shape (B, C, T, H, W), got {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        tokens = self.patch_embed(x.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T, N, D)
        N, D = tokens.shape[1], tokens.shape[2]
        tokens = tokens + self.pos_embed[:, 1:]
        tokens = tokens.reshape(B, T, N, D) + self._time_embed(T)[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens.reshape(B, T * N, D)], dim=1))
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x, T)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, T, H, W) clips -> (B, num_classes) logits (or pooled features when ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))


def zero_temporal_projections(model: VideoVisionTransformer, *, time_embed: bool = True) -> None:
    """Zero every block's ``temporal_fc`` (and the temporal embedding): temporal parts start as the identity."""
    with torch.no_grad():
        for block in model.blocks:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)
        if time_embed:
            model.time_embed.zero_()


def video_vision_transformer(
    variant: str = "vit_fib_video", pretrained: bool = False, *, attention: str = "fib", **kwargs: Any
) -> VideoVisionTransformer:
    """A :class:`VideoVisionTransformer` with Fibottention (``attention="fib"``) or dense spatial attention.

    Temporal attention is always dense. Fibottention options (``mode``, ``backend``, ``w_min``, ...) and
    ``pattern`` / ``pattern_options`` apply to the spatial attention, whose sequence is one frame's
    patches plus the class token (so 2-D patterns see the frame's patch grid).
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    if pretrained:
        raise ValueError(
            f"no pretrained weights are published for {variant!r}; build it and call "
            "fibpolicy.encoders.load_image_weights(model, image_vit_or_weights_file) to start from an image ViT"
        )
    fib_options = {name: kwargs.pop(name) for name in FIB_OPTIONS if name in kwargs}
    if attention == "dense" and fib_options:
        raise ValueError(f"Fibottention options {sorted(fib_options)} given with attention='dense'")
    model = build_model_with_cfg(VideoVisionTransformer, variant, pretrained=False, **kwargs)
    if attention == "fib":
        fibottentionize(model, **fib_options)  # replaces each block's spatial ``attn`` only
    return model


_IMAGE_NAME = re.compile(r"^vit_fib_(?P<size>[a-z]+)_patch16_224$")


def video_variant(image_model_name: str) -> str:
    """The registered video ViT of the same size as an image ``vit_fib_*`` name (``vit_fib_tiny_patch16_224`` ->
    ``vit_fib_video_tiny_patch16_224``)."""
    match = _IMAGE_NAME.match(image_model_name)
    if match is None or match["size"] not in VIT_SIZES:
        raise ValueError(
            f"no video ViT for image model {image_model_name!r}; expected one of "
            f"{[f'vit_fib_{s}_patch16_224' for s in VIT_SIZES]}"
        )
    return f"vit_fib_video_{match['size']}_patch16_224"


# --------------------------------------------------------------------------------- image-ViT weights


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: ``.safetensors``, else a ``torch.save`` file (``.pt``, ``.pth``, ``.bin``).

    Only files: encoders do not know where a training run keeps its weights (resolve a run or
    checkpoint directory first, e.g. ``fibpolicy.checkpoint.resolve_checkpoint(run) / MODEL_FILE``).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory; pass a weights file (.safetensors or .pt). For a fibpolicy run or checkpoint "
            "directory use fibpolicy.checkpoint.resolve_checkpoint(path) / fibpolicy.checkpoint.MODEL_FILE"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no image-ViT weights at {path} (expected a .safetensors or .pt file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    return dict(state)


def _image_state_dict(source: nn.Module | Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        return dict(source)
    return read_weights(source)


def load_image_weights(
    model: VideoVisionTransformer, source: nn.Module | Mapping[str, torch.Tensor] | str | Path
) -> dict[str, list[str]]:
    """Initialise ``model`` from an image ViT: spatial parts copied, temporal parts identity-like.

    ``source`` is a timm ``VisionTransformer``, its state dict, or a weights file (``.safetensors`` or a
    ``torch.save``d state dict), e.g. the model file of an image classifier's checkpoint (a ``backbone.``
    key prefix is stripped). Directories are refused: resolve a run or checkpoint directory to its
    weights file first (``fibpolicy.checkpoint.resolve_checkpoint(run_dir) / MODEL_FILE``). Patch
    embedding and position embedding are resampled to the model's patch and grid sizes if they differ;
    the classifier head is copied only when its shape matches. Each block's temporal attention starts as a
    copy of its spatial attention (as TimeSformer does), ``temporal_fc`` and the temporal embedding at zero.
    Returns lists of keys: ``copied``, ``resampled``, ``skipped`` (source keys not used),
    ``temporal_from_spatial`` and ``initialised`` (left at their identity-like initialisation).
    """
    state = _image_state_dict(source)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    target = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"copied": [], "resampled": [], "skipped": [], "temporal_from_spatial": [], "initialised": []}
    for key, value in state.items():
        if key not in target:
            report["skipped"].append(key)
            continue
        want = target[key].shape
        if value.shape == want:
            new[key] = value
            report["copied"].append(key)
        elif key == "pos_embed":
            grid = model.patch_embed.grid_size
            new[key] = resample_abs_pos_embed(value, new_size=list(grid), num_prefix_tokens=1)
            report["resampled"].append(key)
        elif key == "patch_embed.proj.weight" and value.shape[:2] == want[:2]:
            new[key] = resample_patch_embed(value, list(want[-2:]))
            report["resampled"].append(key)
        else:
            report["skipped"].append(key)
    for key in list(new):
        match = re.match(r"^blocks\.(\d+)\.(attn|norm1)\.(.+)$", key)
        if match:
            temporal = f"blocks.{match[1]}.{'temporal_attn' if match[2] == 'attn' else 'temporal_norm'}.{match[3]}"
            if temporal in target and target[temporal].shape == new[key].shape:
                new[temporal] = new[key].clone()
                report["temporal_from_spatial"].append(temporal)
    missing, _ = model.load_state_dict(new, strict=False)
    zero_temporal_projections(model)
    report["initialised"] = sorted(missing)
    return report


# ------------------------------------------------------------------------------------------ registry

default_cfgs = generate_default_cfgs({
    f"vit_fib_video_{size}_patch16_224": dict(
        url="", num_classes=400, input_size=(3, 224, 224), crop_pct=1.0, interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj", classifier="head",
    )
    for size in VIT_SIZES
})


@register_model
def vit_fib_video_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """Video ViT-T/16, divided space-time attention, Fibottention on the spatial attention (any img_size,
    patch_size, num_frames, num_classes, pattern)."""
    return video_vision_transformer(
        "vit_fib_video_tiny_patch16_224", pretrained, **{"patch_size": 16, "num_frames": 8, **VIT_SIZES["tiny"], **kwargs}
    )


@register_model
def vit_fib_video_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """Video ViT-S/16, divided space-time attention, Fibottention on the spatial attention (any img_size,
    patch_size, num_frames, num_classes, pattern)."""
    return video_vision_transformer(
        "vit_fib_video_small_patch16_224", pretrained, **{"patch_size": 16, "num_frames": 8, **VIT_SIZES["small"], **kwargs}
    )


@register_model
def vit_fib_video_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """Video ViT-B/16, divided space-time attention, Fibottention on the spatial attention (any img_size,
    patch_size, num_frames, num_classes, pattern)."""
    return video_vision_transformer(
        "vit_fib_video_base_patch16_224", pretrained, **{"patch_size": 16, "num_frames": 8, **VIT_SIZES["base"], **kwargs}
    )
