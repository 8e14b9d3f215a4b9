"""Compiled CPU backend: the whole Fibottention (both modes, forward and backward) as one C kernel.

The ``sparse`` backend walks the pattern diagonal by diagonal with PyTorch ops: ~16 passes over a
(B, N, d) slice per diagonal, memory-bound, and badly hurt by OpenMP waits on a busy machine. This
backend does the same arithmetic in one pass per (batch, head) slab while the slab is in cache
(``csrc/fib_diagonal.c``): it never builds anything of size T x T, keeps only the per-row log-sum-exp
for backward, and runs float32 and float64 natively (other dtypes are computed in float32).

The other fixed patterns (``fibpolicy.attention.patterns``) run through the same kernel: a per-slot
column mask, per-query anchors and per-query extra keys (BigBird's random keys, ``random_keys``) are
optional arguments; without them the kernel walks Fibottention's diagonals exactly as before.

The C source is compiled on first use with the system's C compiler (``$CC``, else ``cc``/``gcc``) into
a per-user cache (``$FIBPOLICY_KERNEL_CACHE``, else ``~/.cache/fibpolicy/kernels``), keyed by the
source, the flags and the CPU, written to a temporary name and renamed. Without a compiler, or with
``FIBPOLICY_CPU_KERNEL=0``, :func:`cpu_kernel_status` says why and ``auto`` falls back to the
PyTorch backends.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from ...atomic import atomic_path

from ..pattern import FibPattern
from .sparse import DiagonalPlan, anchor_table, column_table, diagonal_plan, offset_table

SOURCE = Path(__file__).with_name("csrc") / "fib_diagonal.c"
_SOURCES = (SOURCE, SOURCE.with_name("fib_diagonal_body.h"))
_FLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11")
_LIBS = ("-lm", "-lpthread")
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None

__all__ = ["SOURCE", "cpu_kernel_available", "cpu_kernel_status", "cpu_fib_attention"]


def _cache_dir() -> Path:
    if os.environ.get("FIBPOLICY_KERNEL_CACHE"):
        return Path(os.environ["FIBPOLICY_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fibpolicy" / "kernels"


def _cpu_model() -> str:
    # -march=native code is only valid on the CPU it was built for: the model is part of the cache key.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(cc: str, out: Path) -> None:
    """Build the shared library at ``out`` (temporary name, then rename), with -march=native if accepted."""
    errors = []
    for arch in (("-march=native",), ()):
        try:
            with atomic_path(out, suffix=".so") as tmp:
                cmd = [cc, *_FLAGS, *arch, str(SOURCE), "-o", str(tmp), *_LIBS]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    raise _CompileError(f"{' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")
            return
        except _CompileError as err:
            errors.append(str(err))
    raise RuntimeError("compiling the Fibottention CPU kernel failed:\n" + "\n".join(errors))


class _CompileError(RuntimeError):
    """One compiler invocation failed (another set of flags may still work)."""


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    # ..., then the optional parts of the other fixed patterns: column shifts, grid width, anchors,
    # extra (random) keys and their count per query.
    tail = [p, i64, p, p, i64]
    lib.fib_forward.argtypes = [i32, p, p, p, p, p, p, p, i64, i64, i64, i64, i64, i64, f64, i32, i32, *tail]
    lib.fib_backward.argtypes = [i32, p, p, p, p, p, p, p, p, p, p, p, i64, i64, i64, i64, i64, i64, f64, i32, i32, *tail]
    lib.fib_forward.restype = lib.fib_backward.restype = ctypes.c_int
    return lib


def _load() -> ctypes.CDLL | None:
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    with _lock:
        if _library is not None or _failure is not None:
            return _library
        if os.environ.get("FIBPOLICY_CPU_KERNEL", "1") == "0":
            _failure = "disabled by FIBPOLICY_CPU_KERNEL=0"
            return None
        cc = _compiler()
        if cc is None:
            _failure = "no C compiler found (set $CC, or install gcc/clang)"
            return None
        key = hashlib.sha256(
            "\0".join([*(f.read_text() for f in _SOURCES), cc, *_FLAGS, *_LIBS, platform.machine(), _cpu_model()]).encode()
        ).hexdigest()[:16]
        path = _cache_dir() / f"fib_diagonal-{key}.so"
        try:
            if not path.exists():
                _compile(cc, path)
            _library = _declare(ctypes.CDLL(str(path)))
        except (OSError, RuntimeError) as exc:
            _failure = f"{type(exc).__name__}: {exc}"
        return _library


def cpu_kernel_status() -> tuple[bool, str]:
    """Whether the compiled CPU kernel can run here (compiling it on first call), and why not."""
    lib = _load()
    return lib is not None, "ok" if lib is not None else str(_failure)


def cpu_kernel_available() -> bool:
    """True when the compiled CPU kernel is built and loaded (compiles it on first call)."""
    return _load() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pattern_tail(plan: DiagonalPlan, extra: torch.Tensor | None) -> tuple:
    """The kernel's trailing arguments: column shifts, grid width, anchors, extra keys, extras per query."""
    shifts = column_table(plan)
    anchors = anchor_table(plan)
    return (
        _ptr(shifts), plan.col_width if shifts is not None else 0, _ptr(anchors), _ptr(extra),
        0 if extra is None else extra.shape[-1],
    )


class _KernelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: DiagonalPlan, multiplicative: bool, scale: float, extra=None):  # noqa: D102
        lib = _load()
        bsz, heads, tokens, dim = q.shape
        offsets, counts = offset_table(plan)
        out = torch.empty_like(q)
        lse = torch.empty(bsz, heads, tokens, dtype=q.dtype)
        status = lib.fib_forward(
            q.dtype == torch.float64, _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), _ptr(offsets),
            _ptr(counts), offsets.shape[1], bsz, heads, tokens, plan.num_prefix, dim, scale,
            int(multiplicative), torch.get_num_threads(), *_pattern_tail(plan, extra),
        )
        if status != 0:
            raise MemoryError("the Fibottention CPU kernel could not allocate its per-thread scratch buffers")
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.multiplicative, ctx.scale, ctx.extra = plan, multiplicative, scale, extra
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        lib = _load()
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype).contiguous()
        bsz, heads, tokens, dim = q.shape
        offsets, counts = offset_table(ctx.plan)
        grads = [torch.empty_like(q) for _ in range(3)]  # the kernel zeroes each slab it owns
        status = lib.fib_backward(
            q.dtype == torch.float64, _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(grad_out), _ptr(lse),
            *(_ptr(g) for g in grads), _ptr(offsets), _ptr(counts), offsets.shape[1], bsz, heads, tokens,
            ctx.plan.num_prefix, dim, ctx.scale, int(ctx.multiplicative), torch.get_num_threads(),
            *_pattern_tail(ctx.plan, ctx.extra),
        )
        if status != 0:
            raise MemoryError("the Fibottention CPU kernel could not allocate its per-thread scratch buffers")
        return (*grads, None, None, None, None)


def cpu_fib_attention(
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
    """Fibottention (or any fixed pattern; ``random_keys`` (B, h, N, r) for BigBird) on (B, h, T, d) CPU
    tensors with the compiled kernel: O(T * k * d), never T x T."""
    if dropout_p > 0.0:
        raise ValueError("the 'cpu' backend does not implement attention dropout; use backend='dense'")
    if q.device.type != "cpu":
        raise ValueError(f"the 'cpu' backend runs on CPU tensors, got a tensor on {q.device}")
    ok, why = cpu_kernel_status()
    if not ok:
        raise RuntimeError(f"the 'cpu' backend is unavailable: {why}")
    dtype = q.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q, k, v = (t.to(work).contiguous() for t in (q, k, v))
    plan = diagonal_plan(pattern, q.shape[-2] - pattern.num_prefix_tokens)
    extra = None
    if random_keys is not None:
        bsz, heads, n, _ = random_keys.shape
        if (bsz, heads, n) != (q.shape[0], q.shape[1], plan.num_patches):
            raise ValueError(f"random_keys of shape {tuple(random_keys.shape)} do not match q {tuple(q.shape)}")
        extra = random_keys.to(torch.int32).contiguous()
    out = _KernelAttention.apply(q, k, v, plan, mode == "multiplicative", float(scale), extra)
    return out.to(dtype)
