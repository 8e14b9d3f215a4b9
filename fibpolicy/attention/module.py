"""``FibottentionAttention``: a drop-in replacement for timm's ``Attention`` with the Fibottention pattern."""

from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn as nn

from .backends import BACKENDS, MODES, fib_attention, select_backend
from .pattern import PRESETS, FibPattern


class FibottentionAttention(nn.Module):
    """Multi-head self-attention restricted to Fibottention's per-head diagonals (or another fixed pattern).

    Same sub-modules and parameter names as ``timm.layers.Attention`` (``qkv``, ``q_norm``,
    ``k_norm``, ``attn_drop``, ``norm``, ``proj``, ``proj_drop``), so timm ViT weights load as they
    are. The number of patch tokens is read from the input at run time, so one module serves any
    image size; the pattern for each size is built once and cached.

    ``pattern``: a ready-made pattern object from ``fibpolicy.attention.patterns`` (Longformer, BigBird,
    2-D windows, ...) instead of Fibottention's; the Fibottention options (``layer``, ``w_min``, ...)
    must then stay at their defaults, since the pattern carries its own.
    """

    backends: tuple[str, ...] = ("auto", *BACKENDS)
    modes: tuple[str, ...] = MODES

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Optional[Type[nn.Module]] = None,
        *,
        layer: int | None = 0,
        mode: str = "multiplicative",
        backend: str = "auto",
        w_min: int = 5,
        w_max: int | None = None,
        modified: bool = False,
        preset: str = "release",
        num_prefix_tokens: int = 1,
        pattern=None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if backend not in self.backends:
            raise ValueError(f"backend must be one of {self.backends}, got {backend!r}")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if attn_drop > 0.0 and backend not in ("auto", "dense"):
            raise ValueError(
                f"attn_drop={attn_drop} needs backend 'dense' or 'auto' (backend {backend!r} has no "
                "per-weight attention dropout)"
            )
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer must be given when qk_norm or scale_norm is True")
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.mode = mode
        self.backend = backend
        if pattern is None:
            self.pattern = FibPattern(
                num_heads=num_heads, num_prefix_tokens=num_prefix_tokens, preset=preset, w_min=w_min,
                w_max=w_max, modified=modified, layer=layer,
            )
        else:
            if (w_min, w_max, modified, preset) != (5, None, False, "release"):
                raise ValueError("Fibottention options (w_min, w_max, modified, preset) given with an explicit pattern")
            if pattern.num_heads != num_heads:
                raise ValueError(f"pattern has {pattern.num_heads} heads but the attention has {num_heads}")
            if pattern.num_prefix_tokens != num_prefix_tokens:
                raise ValueError(
                    f"pattern has {pattern.num_prefix_tokens} prefix tokens but the attention has {num_prefix_tokens}"
                )
            self.pattern = pattern

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def layer(self) -> int | None:
        """Block index whose shuffle permutes the heads' offset sets."""
        return self.pattern.layer

    def resolved_backend(self, num_tokens: int, device: torch.device) -> str:
        """The backend a forward pass over ``num_tokens`` tokens on ``device`` will use."""
        if self.backend != "auto":
            return self.backend
        return select_backend(num_tokens, device, dropout_p=self._dropout_p(), pattern=self.pattern)

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.0

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Attend within the Fibottention pattern; ``x`` is (B, T, C) with the prefix tokens first."""
        if attn_mask is not None or is_causal:
            # Refuse rather than silently ignore (the release's fused path silently dropped its mask).
            raise ValueError("FibottentionAttention defines its own pattern; attn_mask/is_causal are not supported")
        B, T, C = x.shape
        backend = self.resolved_backend(T, x.device)
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if backend != "dense":
            qkv = qkv.contiguous()  # one copy here instead of one per tensor inside the backend
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        x = fib_attention(
            q, k, v, self.pattern, mode=self.mode, backend=backend, scale=self.scale, dropout_p=self._dropout_p()
        )

        x = x.transpose(1, 2).reshape(B, T, C)
        x = self.norm(x)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    def extra_repr(self) -> str:  # noqa: D102
        p = self.pattern
        if not isinstance(p, FibPattern):
            spec = ", ".join(f"{k}={v}" for k, v in p.spec().items() if k not in ("num_heads",))
            return f"heads={self.num_heads}, mode={self.mode}, backend={self.backend}, pattern: {spec}"
        return (
            f"heads={self.num_heads}, layer={p.layer}, mode={self.mode}, backend={self.backend}, "
            f"preset={p.preset}, w_min={p.w_min}, w_max={p.w_max}, modified={p.modified}, "
            f"prefix={p.num_prefix_tokens}"
        )
