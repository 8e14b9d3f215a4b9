"""Dense reference backend: the whole (h, T, T) mask, plain autograd. Slow but easy to audit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pattern import FibPattern


def with_random_keys(mask: torch.Tensor, random_keys: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, h, T, T) mask: the static (h, T, T) ``mask`` plus each batch element's random patch keys."""
    bsz, heads, n, r = random_keys.shape
    full = mask.unsqueeze(0).expand(bsz, *mask.shape).clone()
    b, h, q, j = (random_keys >= 0).nonzero(as_tuple=True)
    full[b, h, num_prefix + q, num_prefix + random_keys[b, h, q, j]] = True
    return full


def dense_fib_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: FibPattern,
    *,
    mode: str,
    scale: float,
    dropout_p: float = 0.0,
    random_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fibottention (or any fixed pattern) on (B, h, T, d) tensors with the cached (h, T, T) mask broadcast
    over the batch; ``random_keys`` (B, h, N, r) adds per-sample patch keys (BigBird)."""
    num_patches = q.shape[-2] - pattern.num_prefix_tokens
    mask = pattern.mask(num_patches, q.device)
    if random_keys is not None:
        mask = with_random_keys(mask, random_keys.to(q.device), pattern.num_prefix_tokens)
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
