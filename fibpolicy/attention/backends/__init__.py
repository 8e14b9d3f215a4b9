"""Interchangeable implementations of Fibottention on (B, h, T, d) tensors, and the automatic choice."""

from __future__ import annotations

from typing import Callable

import torch

from ..pattern import FibPattern
from .dense import dense_fib_attention
from .fused import fused_fib_attention
from .sparse import diagonal_plan, sparse_fib_attention

__all__ = ["BACKENDS", "MODES", "fib_attention", "select_backend", "diagonal_plan"]

AttentionFn = Callable[..., torch.Tensor]

BACKENDS: dict[str, AttentionFn] = {
    "dense": dense_fib_attention,  # reference: the (h, T, T) mask, plain autograd
    "fused": fused_fib_attention,  # dense scores, in-place masking, hand-written backward (small T)
    "sparse": sparse_fib_attention,  # diagonal by diagonal, never T x T (large T)
}
MODES = ("multiplicative", "additive")

# Measured with benchmarks/attention.py on the project's 2-core CPU (fp32, 12 heads, head dim 64):
# the sparse path is faster than the fused dense one from about this many tokens on.
CPU_SPARSE_MIN_TOKENS = 128
# Not yet measured on a GPU. The sparse path launches ~10 small kernels per diagonal (thousands per
# layer at T = 4097), so on CUDA it is launch-bound; the batched products of the fused path win
# until its (h, T, T) scores get large. An estimate, to be replaced by a measured crossover.
CUDA_SPARSE_MIN_TOKENS = 8192


def select_backend(num_tokens: int, device: torch.device, *, dropout_p: float = 0.0) -> str:
    """The backend ``"auto"`` resolves to for a sequence length, device and attention dropout."""
    if dropout_p > 0.0:
        return "dense"  # the only backend with dropout on individual attention weights
    threshold = CUDA_SPARSE_MIN_TOKENS if device.type == "cuda" else CPU_SPARSE_MIN_TOKENS
    return "sparse" if num_tokens >= threshold else "fused"


def _check_rows(pattern: FibPattern, num_patches: int, mode: str) -> None:
    if mode == "additive" and pattern.num_prefix_tokens == 0:
        empty = (diagonal_plan(pattern, num_patches).n_allowed == 0).nonzero()
        if len(empty):
            h, n = empty[0].tolist()
            raise ValueError(
                f"additive mode with no prefix token leaves query {n} of head {h} with no allowed key "
                f"for {num_patches} patches; add a prefix (CLS) token or use mode='multiplicative'"
            )


def fib_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: FibPattern,
    *,
    mode: str = "multiplicative",
    backend: str = "auto",
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fibottention of (B, h, T, d) queries, keys and values; T = prefix tokens + patches."""
    if q.dim() != 4 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v must share one (B, h, T, d) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] != pattern.num_heads:
        raise ValueError(f"q has {q.shape[1]} heads but the pattern was built for {pattern.num_heads}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    num_patches = q.shape[-2] - pattern.num_prefix_tokens
    if num_patches < 1:
        raise ValueError(
            f"sequence of {q.shape[-2]} tokens has no patch token after {pattern.num_prefix_tokens} prefix tokens"
        )
    _check_rows(pattern, num_patches, mode)
    if backend == "auto":
        backend = select_backend(q.shape[-2], q.device, dropout_p=dropout_p)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {tuple(BACKENDS)}, got {backend!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return BACKENDS[backend](q, k, v, pattern, mode=mode, scale=scale, dropout_p=dropout_p)
