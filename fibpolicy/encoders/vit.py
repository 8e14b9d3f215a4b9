"""Image ViTs with Fibottention in every block, built from timm's ``VisionTransformer``.

``import fibpolicy`` registers ``vit_fib_{tiny,small,base}_patch16_224`` in timm's model registry,
so ``timm.create_model("vit_fib_base_patch16_224", img_size=84, patch_size=8, num_classes=0)`` works.
``attention="dense"`` builds the baseline twin: the same timm model and initialisation, with timm's
own dense attention left in place. ``pattern="longformer"`` (or any name of
``fibpolicy.attention.PATTERNS``, options in ``pattern_options``) puts another fixed sparse pattern in
every block instead of Fibottention's, on the same backends.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.layers import Attention
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..attention import FibottentionAttention
from ..attention.patterns import PATTERNS, make_pattern

__all__ = [
    "ATTENTION_KINDS",
    "FIB_OPTIONS",
    "fibottentionize",
    "vision_transformer",
    "VIT_SIZES",
    "vit_fib_base_patch16_224",
    "vit_fib_small_patch16_224",
    "vit_fib_tiny_patch16_224",
]

ATTENTION_KINDS = ("fib", "dense")
# Keyword arguments that configure the sparse attention (Fibottention or another pattern) rather than the ViT.
FIB_OPTIONS = ("mode", "backend", "w_min", "w_max", "modified", "preset", "layer_shuffle", "pattern", "pattern_options")
_FIB_ONLY = {"w_min": 5, "w_max": None, "modified": False, "preset": "release"}

VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


def _fib_from_timm(attn: Attention, layer: int | None, num_prefix_tokens: int, **options: Any) -> FibottentionAttention:
    """A FibottentionAttention that takes over ``attn``'s sub-modules (and so its weights)."""
    if getattr(attn, "gate", None) is not None:
        raise ValueError("gated timm attention is not supported by FibottentionAttention")
    if attn.qkv.in_features != attn.num_heads * attn.head_dim:
        raise ValueError(
            f"attention with head_dim {attn.head_dim} x {attn.num_heads} heads != dim {attn.qkv.in_features} "
            "is not supported by FibottentionAttention"
        )
    new = FibottentionAttention(
        attn.qkv.in_features,
        num_heads=attn.num_heads,
        attn_drop=attn.attn_drop.p,
        proj_drop=attn.proj_drop.p,
        layer=layer,
        num_prefix_tokens=num_prefix_tokens,
        device=attn.qkv.weight.device,
        dtype=attn.qkv.weight.dtype,
        **options,
    )
    for name in ("qkv", "q_norm", "k_norm", "norm", "proj"):
        setattr(new, name, getattr(attn, name))
    return new


def fibottentionize(
    model: VisionTransformer,
    *,
    mode: str | None = None,
    backend: str = "auto",
    w_min: int = 5,
    w_max: int | None = None,
    modified: bool = False,
    preset: str = "release",
    layer_shuffle: bool = True,
    pattern: str = "fibottention",
    pattern_options: dict[str, Any] | None = None,
) -> VisionTransformer:
    """Replace, in place, every block's timm ``Attention`` by ``FibottentionAttention(layer=block_index)``.

    The new modules reuse the old projection layers, so weights (and a model's initialisation) are kept.
    ``layer_shuffle=False`` gives every block the unshuffled head order (layer ``None``).
    ``pattern`` names another fixed pattern (``fibpolicy.attention.PATTERNS``) with its ``pattern_options``;
    each block gets it with its own layer index (BigBird's fixed random keys differ per layer).
    ``mode=None`` is each pattern's default: ``multiplicative`` for Fibottention (the release), ``additive``
    for the others (the authors' baselines added -1e9 outside their masks).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {sorted(PATTERNS)}, got {pattern!r}")
    pattern_options = dict(pattern_options or {})
    if pattern != "fibottention":
        changed = {k: v for k, v in dict(w_min=w_min, w_max=w_max, modified=modified, preset=preset).items() if v != _FIB_ONLY[k]}
        if changed:
            raise ValueError(f"Fibottention options {sorted(changed)} given with pattern={pattern!r}; use pattern_options")
    elif pattern_options:
        raise ValueError(f"pattern_options {sorted(pattern_options)} given for Fibottention; pass its options directly")
    for index, block in enumerate(model.blocks):
        if not isinstance(block.attn, Attention):
            raise TypeError(f"block {index} has {type(block.attn).__name__}, expected timm's Attention")
        layer = index if layer_shuffle else None
        if pattern == "fibottention":
            block.attn = _fib_from_timm(
                block.attn, layer, model.num_prefix_tokens, mode=mode or "multiplicative", backend=backend,
                w_min=w_min, w_max=w_max, modified=modified, preset=preset,
            )
        else:
            obj = make_pattern(
                pattern, num_heads=block.attn.num_heads, num_prefix_tokens=model.num_prefix_tokens, layer=layer,
                **pattern_options,
            )
            block.attn = _fib_from_timm(
                block.attn, layer, model.num_prefix_tokens, mode=mode or obj.default_mode, backend=backend, pattern=obj,
            )
    return model


def vision_transformer(variant: str = "vit_fib", pretrained: bool = False, *, attention: str = "fib", **kwargs: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` (any timm ViT keyword) with Fibottention (``attention="fib"``) or dense attention.

    ``pattern=`` (default ``"fibottention"``) and ``pattern_options=`` choose another fixed sparse pattern.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    if pretrained:
        raise ValueError(
            f"no pretrained weights are published for {variant!r}; build it with pretrained=False and load a "
            "timm ViT state dict with model.load_state_dict(...) (parameter names are identical)"
        )
    fib_options = {name: kwargs.pop(name) for name in FIB_OPTIONS if name in kwargs}
    if attention == "dense" and fib_options:
        raise ValueError(f"Fibottention options {sorted(fib_options)} given with attention='dense'")
    model = build_model_with_cfg(
        VisionTransformer, variant, pretrained=False, pretrained_filter_fn=checkpoint_filter_fn, **kwargs
    )
    if attention == "fib":
        fibottentionize(model, **fib_options)
    return model


# No weights are published (url empty); the cfgs give timm's data helpers the input size and normalisation.
default_cfgs = generate_default_cfgs({
    f"vit_fib_{size}_patch16_224": dict(
        url="", num_classes=1000, input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj", classifier="head",
    )
    for size in VIT_SIZES
})


@register_model
def vit_fib_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-T/16 with Fibottention in every block (any img_size, patch_size, num_classes, pattern)."""
    return vision_transformer("vit_fib_tiny_patch16_224", pretrained, **{"patch_size": 16, **VIT_SIZES["tiny"], **kwargs})


@register_model
def vit_fib_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 with Fibottention in every block (any img_size, patch_size, num_classes, pattern)."""
    return vision_transformer("vit_fib_small_patch16_224", pretrained, **{"patch_size": 16, **VIT_SIZES["small"], **kwargs})


@register_model
def vit_fib_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 with Fibottention in every block (any img_size, patch_size, num_classes, pattern)."""
    return vision_transformer("vit_fib_base_patch16_224", pretrained, **{"patch_size": 16, **VIT_SIZES["base"], **kwargs})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
