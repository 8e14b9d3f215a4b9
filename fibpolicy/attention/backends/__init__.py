"""Interchangeable implementations of Fibottention on (B, h, T, d) tensors, and the automatic choice."""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Callable

import torch

from ..pattern import FibPattern
from .cpu_kernel import cpu_fib_attention, cpu_kernel_status
from .dense import dense_fib_attention
from .fused import fused_fib_attention
from .gather import gather_attention
from .sparse import diagonal_plan, sparse_fib_attention
from .triton_diag import triton_available, triton_fib_attention

__all__ = [
    "BACKENDS", "MODES", "RANDOM_KEY_BACKENDS", "backend_status", "cpu_kernel_status", "diagonal_plan",
    "fib_attention", "select_backend",
]

AttentionFn = Callable[..., torch.Tensor]

BACKENDS: dict[str, AttentionFn] = {
    "dense": dense_fib_attention,  # reference: the (h, T, T) mask, plain autograd
    "fused": fused_fib_attention,  # dense scores, in-place masking, hand-written backward (small T)
    "sparse": sparse_fib_attention,  # diagonal by diagonal with torch ops, never T x T
    "cpu": cpu_fib_attention,  # compiled C kernel: one pass per (batch, head) slab, never T x T
    "triton": triton_fib_attention,  # Triton kernels for CUDA, never T x T
    "gather": gather_attention,  # every query's keys gathered at once, plain autograd (random keys on CUDA)
}
# Backends that take per-call random keys (BigBird); the others run fixed patterns only.
RANDOM_KEY_BACKENDS = ("dense", "sparse", "cpu", "gather")
MODES = ("multiplicative", "additive")

# Without the compiled kernel (no C compiler): measured with benchmarks/attention.py on the project's
# 2-core CPU, the torch-only sparse path beats the fused dense one from about this many tokens on.
CPU_SPARSE_MIN_TOKENS = 128
# CUDA without a working Triton: an estimate, not measured. The sparse path launches ~10 small kernels
# per diagonal, so it is launch-bound until the fused path's (h, T, T) scores get large.
CUDA_SPARSE_MIN_TOKENS = 8192


def backend_status(backend: str, device: torch.device | str) -> tuple[bool, str]:
    """Whether ``backend`` can run on ``device`` here, and if not, why."""
    device = torch.device(device)
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; expected one of {tuple(BACKENDS)}"
    if backend == "cpu":
        if device.type != "cpu":
            return False, f"the 'cpu' backend runs on CPU tensors, not {device.type}"
        return cpu_kernel_status()
    if backend == "triton":
        if not triton_available(device):
            return False, "triton is not installed or the device is not CUDA"
        if device.type == "cuda" and not _triton_self_check(str(device)):
            return False, "the Triton kernels failed their first-use check on this GPU (see the warning)"
    return True, "ok"


@lru_cache(maxsize=None)
def _triton_self_check(device: str) -> bool:
    # The Triton path compiles on first use for this GPU and toolchain; "auto" only takes it after it
    # has reproduced the dense reference once, so a broken toolchain costs a warning, not a training run.
    pattern = FibPattern(num_heads=2, num_prefix_tokens=1, layer=1)
    gen = torch.Generator().manual_seed(0)
    q, k, v, g = (torch.randn(2, 2, 1 + 150, 64, generator=gen).to(device) for _ in range(4))
    try:
        for mode in MODES:
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = triton_fib_attention(*leaves, pattern, mode=mode, scale=0.125)
            grads = torch.autograd.grad(out, leaves, g)
            ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
            ref = dense_fib_attention(*ref_leaves, pattern, mode=mode, scale=0.125)
            ref_grads = torch.autograd.grad(ref, ref_leaves, g.double())
            for got, want in zip((out, *grads), (ref, *ref_grads)):
                torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not pick this backend automatically
        warnings.warn(f"Fibottention's Triton backend failed its check on {device} and is not used by "
                      f"backend='auto': {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
        return False
    return True


def _random_keys_per_query(pattern) -> int:
    return int(getattr(pattern, "random_keys_per_query", 0) or 0)


def select_backend(num_tokens: int, device: torch.device, *, dropout_p: float = 0.0, pattern=None) -> str:
    """The backend ``"auto"`` resolves to for a sequence length, device, attention dropout and pattern."""
    if dropout_p > 0.0:
        return "dense"  # the only backend with dropout on individual attention weights
    if pattern is not None and _random_keys_per_query(pattern):
        # Random keys per call: the compiled CPU kernel takes them; elsewhere the gather paths.
        if device.type == "cpu":
            return "cpu" if backend_status("cpu", device)[0] else "sparse"
        return "gather"
    if device.type == "cpu":
        # The compiled kernel is the fastest CPU path at every length measured (65 to 4097 tokens).
        if backend_status("cpu", device)[0]:
            return "cpu"
        return "sparse" if num_tokens >= CPU_SPARSE_MIN_TOKENS else "fused"
    if device.type == "cuda" and backend_status("triton", device)[0]:
        return "triton"
    return "sparse" if num_tokens >= CUDA_SPARSE_MIN_TOKENS else "fused"


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
    random_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fibottention (or any pattern of ``fibpolicy.attention.patterns``) of (B, h, T, d) queries, keys and
    values; T = prefix tokens + patches.

    A pattern with random keys (BigBird) draws them here on every call unless ``random_keys``
    (B, h, N, r) int64 patch indices, -1 for none, are given (as the tests do, to compare backends).
    """
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
        backend = select_backend(q.shape[-2], q.device, dropout_p=dropout_p, pattern=pattern)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {tuple(BACKENDS)}, got {backend!r}")
    available, why = backend_status(backend, q.device)
    if not available:
        raise RuntimeError(f"Fibottention backend {backend!r} cannot run on {q.device}: {why}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    extra = {}
    if random_keys is None and _random_keys_per_query(pattern):
        random_keys = pattern.sample_random_keys(q.shape[0], num_patches, q.device)
    if random_keys is not None:
        if backend not in RANDOM_KEY_BACKENDS:
            raise ValueError(
                f"backend {backend!r} runs fixed patterns only; random keys (BigBird) need one of {RANDOM_KEY_BACKENDS}"
            )
        if random_keys.shape[:3] != (q.shape[0], q.shape[1], num_patches):
            raise ValueError(f"random_keys must be (B, h, N, r) = ({q.shape[0]}, {q.shape[1]}, {num_patches}, r), "
                             f"got {tuple(random_keys.shape)}")
        extra["random_keys"] = random_keys
    return BACKENDS[backend](q, k, v, pattern, mode=mode, scale=scale, dropout_p=dropout_p, **extra)
