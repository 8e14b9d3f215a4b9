"""Image ViTs with Fibottention in every block, built from timm's ``VisionTransformer``.

``import fibpolicy`` registers ``vit_fib_{tiny,small,base}_patch16_224`` in timm's model registry,
so ``timm.create_model("vit_fib_base_patch16_224", img_size=84, patch_size=8, num_classes=0)`` works.
``attention="dense"`` builds the baseline twin: the same timm model and initialisation, with timm's
own dense attention left in place.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch.nn as nn
from timm.layers import Attention
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ..attention import FibottentionAttention

__all__ = ["ATTENTION_KINDS", "FIB_OPTIONS", "fibottentionize", "register_sizes", "vision_transformer", "VIT_SIZES"]

ATTENTION_KINDS = ("fib", "dense")
# Keyword arguments that configure Fibottention rather than the ViT itself.
FIB_OPTIONS = ("mode", "backend", "w_min", "w_max", "modified", "preset", "layer_shuffle")

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
    mode: str = "multiplicative",
    backend: str = "auto",
    w_min: int = 5,
    w_max: int | None = None,
    modified: bool = False,
    preset: str = "release",
    layer_shuffle: bool = True,
) -> VisionTransformer:
    """Replace, in place, every block's timm ``Attention`` by ``FibottentionAttention(layer=block_index)``.

    The new modules reuse the old projection layers, so weights (and a model's initialisation) are kept.
    ``layer_shuffle=False`` gives every block the unshuffled head order.
    """
    for index, block in enumerate(model.blocks):
        if not isinstance(block.attn, Attention):
            raise TypeError(f"block {index} has {type(block.attn).__name__}, expected timm's Attention")
        block.attn = _fib_from_timm(
            block.attn, index if layer_shuffle else None, model.num_prefix_tokens,
            mode=mode, backend=backend, w_min=w_min, w_max=w_max, modified=modified, preset=preset,
        )
    return model


def vision_transformer(variant: str = "vit_fib", pretrained: bool = False, *, attention: str = "fib", **kwargs: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` (any timm ViT keyword) with Fibottention (``attention="fib"``) or dense attention."""
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


def register_sizes(module_name: str, name_format: str, build: Callable[..., nn.Module], defaults: dict[str, Any], doc: str) -> list[str]:
    """Register one timm entry point per ViT size: ``name_format.format(size=...)`` -> ``build(name, pretrained, **kw)``.

    The entry points live in ``module_name`` (whose ``default_cfgs`` timm reads) and are added to its
    namespace and ``__all__``.
    """
    module = sys.modules[module_name]
    names = []
    for size, dims in VIT_SIZES.items():
        name = name_format.format(size=size)

        def entry(pretrained: bool = False, _name: str = name, _dims: dict = dims, **kwargs: Any) -> nn.Module:
            return build(_name, pretrained, **{**defaults, **_dims, **kwargs})

        entry.__name__ = entry.__qualname__ = name
        entry.__module__ = module_name
        entry.__doc__ = doc.format(size=size[0].upper())
        setattr(module, name, register_model(entry))
        module.__all__.append(name)
        names.append(name)
    return names


register_sizes(
    __name__, "vit_fib_{size}_patch16_224", vision_transformer, {"patch_size": 16},
    "ViT-{size}/16 with Fibottention in every block (any img_size, patch_size, num_classes).",
)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
