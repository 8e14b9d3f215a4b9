"""Gather backend: every query's allowed keys gathered into one (B, h, N, slots, d) block, plain autograd.

The index table is the pattern's static key table (diagonals, column masks, anchors: any fixed
pattern) with the per-call random keys (BigBird) appended. Work and memory are O(T * k * d), as on the
diagonal backends, but in a few large batched ops instead of one pass per diagonal: the path for
random keys on CUDA, where the Triton kernels (whose backward walks fixed diagonals) do not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sparse import all_keys, diagonal_plan


def gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern,
    *,
    mode: str,
    scale: float,
    dropout_p: float = 0.0,
    random_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Any fixed pattern (plus optional (B, h, N, r) ``random_keys``) on (B, h, T, d) tensors by gathering."""
    if dropout_p > 0.0:
        raise ValueError("the 'gather' backend does not implement attention dropout; use backend='dense'")
    p = pattern.num_prefix_tokens
    bsz, heads, t, d = q.shape
    n = t - p
    keys = all_keys(diagonal_plan(pattern, n), random_keys).to(q.device).expand(bsz, heads, n, -1)
    slots = keys.shape[-1]
    valid = keys >= 0
    idx = keys.clamp(min=0).reshape(bsz, heads, n * slots, 1).expand(-1, -1, -1, d)
    qs = q[:, :, p:] * scale
    k_sel = torch.gather(k[:, :, p:], 2, idx).view(bsz, heads, n, slots, d)
    v_sel = torch.gather(v[:, :, p:], 2, idx).view(bsz, heads, n, slots, d)
    logits = torch.einsum("bhnd,bhnsd->bhns", qs, k_sel).masked_fill(~valid, float("-inf"))
    if p:
        logits = torch.cat([qs @ k[:, :, :p].transpose(-2, -1), logits], dim=-1)
    if mode == "additive":
        weights = logits.softmax(dim=-1)
        out = torch.einsum("bhns,bhnsd->bhnd", weights[..., p:], v_sel)
        if p:
            out = out + weights[..., :p] @ v[:, :, :p]
    else:
        # softmax(S * M) without the masked columns: they all have logit 0 (see sparse.py's docstring).
        row_max = logits.amax(dim=-1, keepdim=True).clamp(min=0.0).detach()
        weights = torch.exp(logits - row_max)  # 0 on missing slots
        masked_w = torch.exp(-row_max)
        n_allowed = valid.sum(dim=-1, keepdim=True) + p
        denom = weights.sum(dim=-1, keepdim=True) + masked_w * (t - n_allowed)
        value_w = torch.cat([weights[..., :p], torch.where(valid, weights[..., p:], 0.0)], dim=-1) - masked_w * torch.cat(
            [torch.ones_like(weights[..., :p]), valid.to(weights.dtype)], dim=-1)
        out = torch.einsum("bhns,bhnsd->bhnd", value_w[..., p:], v_sel) + masked_w * v.sum(dim=-2, keepdim=True)
        if p:
            out = out + value_w[..., :p] @ v[:, :, :p]
        out = out / denom
    patch_out = out.to(q.dtype)
    if not p:
        return patch_out
    prefix_out = F.scaled_dot_product_attention(q[:, :, :p], k, v, scale=scale)
    return torch.cat([prefix_out, patch_out], dim=-2)
