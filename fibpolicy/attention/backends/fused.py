"""Fused dense backend for short sequences: cache-sized chunks, hand-written backward.

At small T much of the time goes into passes over the (B, h, T, T) scores. This backend processes
a few batch elements at a time so a chunk of scores stays in the CPU cache while it is scaled,
masked (one pass for both) and normalised; only the probabilities are kept for backward, which
needs four batched products instead of autograd's five plus its extra elementwise passes.
It is meant for T up to ~100 tokens, where the (B, h, T, T) probabilities are small.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..pattern import FibPattern

# Floats of scores per chunk: about 1 MiB, which stays in a core's L2 cache.
CHUNK_SCORE_ELEMENTS = 1 << 18


@lru_cache(maxsize=12)
def _score_factor(pattern: FibPattern, num_patches: int, device: str, dtype: torch.dtype, scale: float) -> torch.Tensor:
    # scale on allowed entries, 0 elsewhere: multiplicative masking and scaling in one pass.
    return pattern.mask(num_patches, device).to(dtype) * scale


@lru_cache(maxsize=12)
def _score_bias(pattern: FibPattern, num_patches: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    mask = pattern.mask(num_patches, device)
    return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))


def _chunks(batch: int, heads: int, tokens: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_SCORE_ELEMENTS // (heads * tokens * tokens))
    return [(b, min(b + step, batch)) for b in range(0, batch, step)]


def _scores(q, k, factor, bias, scale):
    s = torch.matmul(q, k.transpose(-2, -1))
    if factor is not None:  # multiplicative: S * M, masked logits 0 and still in the softmax
        return s.mul_(factor)
    return s.mul_(scale).add_(bias)  # additive: -inf outside the pattern


class _ChunkedMaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, factor, bias, scale: float):  # noqa: D102
        bsz, heads, t, d = q.shape
        out = torch.empty(bsz, heads, t, d, dtype=q.dtype, device=q.device)
        probs = torch.empty(bsz, heads, t, t, dtype=q.dtype, device=q.device)
        for b0, b1 in _chunks(bsz, heads, t):
            s = _scores(q[b0:b1], k[b0:b1], factor, bias, scale)
            torch.softmax(s, dim=-1, out=probs[b0:b1])
            torch.matmul(probs[b0:b1], v[b0:b1], out=out[b0:b1])
        ctx.save_for_backward(q, k, v, out, probs, factor)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, out, probs_all, factor = ctx.saved_tensors
        bsz, heads, t, _ = q.shape
        # Contiguous outputs (the inputs are often permuted views), so each chunk is one dense block.
        grad_q, grad_k, grad_v = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        for b0, b1 in _chunks(bsz, heads, t):
            q_c, k_c, v_c, go_c = q[b0:b1], k[b0:b1], v[b0:b1], grad_out[b0:b1]
            probs = probs_all[b0:b1]
            torch.matmul(probs.transpose(-2, -1), go_c, out=grad_v[b0:b1])
            grad_s = torch.matmul(go_c, v_c.transpose(-2, -1)).sub_(delta[b0:b1]).mul_(probs)
            # Multiplicative: masked logits are the constant 0, so no gradient flows through them;
            # additive: masked entries already have zero probability.
            grad_s.mul_(factor if factor is not None else ctx.scale)
            torch.matmul(grad_s, k_c, out=grad_q[b0:b1])
            torch.matmul(grad_s.transpose(-2, -1), q_c, out=grad_k[b0:b1])
        return grad_q, grad_k, grad_v, None, None, None


def fused_fib_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: FibPattern,
    *,
    mode: str,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fibottention on (B, h, T, d) tensors: dense scores in cache-sized chunks, hand-written backward."""
    if dropout_p > 0.0:
        raise ValueError("the 'fused' backend does not implement attention dropout; use backend='dense'")
    num_patches = q.shape[-2] - pattern.num_prefix_tokens
    device = str(q.device)
    if mode == "multiplicative":
        factor, bias = _score_factor(pattern, num_patches, device, q.dtype, scale), None
    else:
        factor, bias = None, _score_bias(pattern, num_patches, device, q.dtype)
    return _ChunkedMaskedAttention.apply(q, k, v, factor, bias, scale)
