"""Dense reference backend: the whole (h, T, T) mask, plain autograd. Slow but easy to audit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pattern import FibPattern


def dense_fib_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: FibPattern,
    *,
    mode: str,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fibottention on (B, h, T, d) tensors with the cached (h, T, T) mask broadcast over the batch."""
    num_patches = q.shape[-2] - pattern.num_prefix_tokens
    mask = pattern.mask(num_patches, q.device)
    scores = (q * scale) @ k.transpose(-2, -1)
    if mode == "multiplicative":
        # The release's semantics: masked logits become 0 and still take part in the softmax.
        scores = scores * mask
    else:
        scores = scores.masked_fill(~mask, float("-inf"))
    attn = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v
