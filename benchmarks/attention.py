"""Speed and peak memory of the Fibottention backends against dense attention and the release's method.

    python benchmarks/attention.py                      # the full table (CPU: ~10 minutes)
    python benchmarks/attention.py --tokens 65 197 --mode additive --device cuda --dtype bfloat16

Per sequence length T (12 heads, head dim 64, batch scaled as 64 * (197 / T)^2 so every row does
about the same dense work) it prints forward and forward+backward times (median of interleaved
repeats) and the peak memory of one forward+backward of the attention op, for:

- ``sdpa``: ``F.scaled_dot_product_attention`` without a mask (the speed of dense attention);
  on CUDA in bfloat16/float16 it is forced onto the flash kernel (``sdpa (flash)``); float32 has no
  flash kernel and runs PyTorch's default choice (``sdpa (default, fp32: no flash)``);
- ``sdpa+mask``: the same with the (h, T, T) boolean Fibottention mask (additive semantics);
- ``flex`` (CUDA only; skipped with a note on CPU): ``torch.compile(flex_attention)`` with a block mask
  from ``create_block_mask`` whose mask_mod reads that same (h, T, T) mask (additive semantics). A row
  that cannot run (flex missing, a compile failure, any other error) says why and the table goes on;
- ``release``: the released method, scores x a (B, h, T, T) 0/1 mask rebuilt with Python loops on
  every call (generously, one slice assignment per diagonal rather than per element);
- each backend of ``fibpolicy.attention`` that runs on the device (``cpu``: the compiled C kernel;
  ``triton``: CUDA only) and ``auto``;
- the other fixed patterns (``--patterns``; default Longformer, BigBird, 2-D window, axial, strided) at
  the density matched to Fibottention's at that T (12 heads): each pattern's size knob (window, kernel,
  stride) is set to the value whose patch-block density is nearest (``match_density``; axial has no
  knob), on the patch grid ``H x W`` with H the largest divisor of N below sqrt(N). They run with
  ``auto`` (``--pattern-backends`` for others); the label gives the knob and the density. BigBird's
  random keys are drawn inside the timed call, as in training.

Peak memory on CPU is the growth of the peak resident set (VmHWM) of a fresh process running the op
once, over its resident set with inputs allocated and per-shape caches built; on CUDA it is
``torch.cuda.max_memory_allocated`` above the inputs, measured in this process after the warm-up (a
fresh process per row would pay CUDA start-up, Triton loading and flex's compile every time).

``--dtype`` takes several dtypes (rows carry theirs); ``--methods`` picks methods (then no pattern rows
unless ``--patterns`` names some); ``--max-seconds`` stops starting new sequence lengths, methods and
repeats once the budget is spent and lists what it skipped; ``--json`` writes every row (NaN as null).
After the table it prints, per T, the speed of the ``triton``/``auto`` rows relative to ``sdpa`` and, on
CUDA in bfloat16, the GPU targets: >= 4x faster than flash SDPA at T = 4097, <= 1.2x its time at T <= 197.

    python benchmarks/attention.py --device cuda --dtype bfloat16 float32 --methods sdpa sdpa+mask flex triton auto
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibpolicy.attention import (  # noqa: E402
    BACKENDS,
    FibPattern,
    density,
    diagonal_plan,
    fib_attention,
    fibottention_offsets,
    match_density,
    select_backend,
)
from fibpolicy.attention.backends import backend_status  # noqa: E402
from fibpolicy.atomic import write_json  # noqa: E402

from budget import Budget  # noqa: E402  (benchmarks/, the script's own directory)

HEADS, HEAD_DIM = 12, 64
DEFAULT_TOKENS = (65, 197, 785, 1569, 4097)
METHODS = ("sdpa", "sdpa+mask", "flex", "release", *BACKENDS, "auto")
HALF = (torch.bfloat16, torch.float16)
PATTERN_NAMES = ("longformer", "bigbird", "window2d", "axial", "strided")
_KNOBS = {"longformer": "window", "bigbird": "window", "window2d": "kernel_size", "strided": "stride"}


def patch_grid(num_patches: int) -> tuple[int, int]:
    """(H, W) with H the largest divisor of N not above sqrt(N): the square grid when there is one."""
    h = math.isqrt(num_patches)
    while num_patches % h:
        h -= 1
    return h, num_patches // h


@lru_cache(maxsize=None)
def bench_pattern(name: str, tokens: int):
    """Pattern ``name`` for T tokens (1 prefix) at the density nearest Fibottention's (12 heads)."""
    grid = patch_grid(tokens - 1)
    target = density(FibPattern(num_heads=HEADS), grid)
    return match_density(name, grid, target, num_heads=HEADS)


def pattern_method(name: str, backend: str = "auto") -> str:
    """The method key of a pattern row."""
    return f"pattern:{name}:{backend}"


def method_label(method: str, tokens: int) -> str:
    """Table label: the method, or for a pattern row its knob, density and backend."""
    if not method.startswith("pattern:"):
        return method
    _, name, backend = method.split(":")
    pattern = bench_pattern(name, tokens)
    knob = _KNOBS.get(name)
    value = getattr(pattern, knob) if knob else None
    value = value[0] if isinstance(value, tuple) else value
    setting = f" {knob}={value}" if knob else ""
    if backend == "auto":
        backend = f"auto ({select_backend(tokens, torch.device('cpu'), pattern=pattern)})" if not torch.cuda.is_available() else "auto"
    return f"{name}{setting} ({100 * density(pattern, patch_grid(tokens - 1)):.2f} %) {backend}"


def batch_for(tokens: int) -> int:
    """Batch that keeps B * T^2 near ViT-B/16's 64 * 197^2."""
    return max(1, round(64 * (197 / tokens) ** 2))


def release_mask(bsz: int, tokens: int, mode_layer: int = 0) -> torch.Tensor:
    """The release's per-call (B, h, T, T) float mask, built with Python loops over heads and offsets."""
    n = tokens - 1
    mask = torch.zeros(HEADS, n, n)
    for h, offsets in enumerate(fibottention_offsets(n, HEADS, layer=mode_layer)):
        for o in offsets:
            if o < n:
                idx = torch.arange(n - o)
                mask[h, idx, idx + o] = 1
                mask[h, idx + o, idx] = 1
    full = torch.ones(HEADS, tokens, tokens)
    full[:, 1:, 1:] = mask
    return full.unsqueeze(0).repeat(bsz, 1, 1, 1)


# (device type, dtype) -> None when sdpa runs on the flash kernel there, else why not (``prepare_method``).
_FLASH: dict[tuple[str, torch.dtype], str | None] = {}
_FLEX: dict[str, object] = {}


def sdpa_label(device: str, dtype: torch.dtype) -> str:
    """What the ``sdpa`` row runs: the flash kernel, or PyTorch's default and why."""
    if not device.startswith("cuda"):
        return "sdpa"
    why = _FLASH.get((torch.device(device).type, dtype), "not checked")
    return "sdpa (flash)" if why is None else f"sdpa (default, {why})"


def _sdpa(q, k, v) -> torch.Tensor:
    if q.is_cuda and _FLASH.get((q.device.type, q.dtype), "") is None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def _flex_compiled():
    """``torch.compile(flex_attention)``, built once (compiles lazily, per shape and dtype, on first call)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        cfg = torch._dynamo.config
        # One compiled graph per (T, dtype, grad mode): more than the default limit of 8 in one run; past
        # it dynamo would silently fall back to eager flex_attention (which materialises the scores).
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 256))
        _FLEX["fn"] = torch.compile(flex_attention)
    return _FLEX["fn"]


@lru_cache(maxsize=4)
def flex_block_mask(pattern: FibPattern, tokens: int, device: str):
    """Block mask of the (h, T, T) boolean mask ``sdpa+mask`` uses: mask_mod reads that tensor."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask = pattern.mask(tokens - pattern.num_prefix_tokens, device)
    # Zero-padded to whole 128-blocks, so a read at a padded index (partial last block) stays in bounds.
    size = -(-tokens // 128) * 128
    padded = torch.zeros(mask.shape[0], size, size, dtype=torch.bool, device=device)
    padded[:, :tokens, :tokens] = mask

    def mask_mod(b, h, q_idx, kv_idx):
        return padded[h, q_idx, kv_idx]

    return create_block_mask(mask_mod, B=None, H=mask.shape[0], Q_LEN=tokens, KV_LEN=tokens, device=device)


def prepare_method(method: str, q, k, v, pattern: FibPattern) -> str | None:
    """Per-method set-up before the warm-up; returns why ``method`` cannot run here, or None."""
    device, key = str(q.device), (q.device.type, q.dtype)
    if method == "sdpa" and q.is_cuda and key not in _FLASH:
        if q.dtype not in HALF:
            _FLASH[key] = f"{str(q.dtype).removeprefix('torch.')}: no flash"
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            try:
                with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    F.scaled_dot_product_attention(q, k, v)
                _FLASH[key] = None
            except RuntimeError as exc:
                _FLASH[key] = f"flash failed: {str(exc).strip().splitlines()[0][:80]}"
    if method == "flex":
        if not q.is_cuda:
            return "flex runs on CUDA only here (CPU flex would compile for minutes)"
        try:
            _flex_compiled()
        except ImportError as exc:
            return f"flex_attention unavailable in torch {torch.__version__}: {exc}"
        flex_block_mask(pattern, q.shape[-2], device)
    return None


def run_method(method: str, q, k, v, pattern: FibPattern, mode: str) -> torch.Tensor:
    """One forward of ``method`` on (B, h, T, d) inputs."""
    if method == "sdpa":
        return _sdpa(q, k, v)
    if method == "flex":
        return _flex_compiled()(q, k, v, block_mask=flex_block_mask(pattern, q.shape[-2], str(q.device)))
    if method == "sdpa+mask":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.mask(q.shape[-2] - 1, q.device))
    if method == "release":
        mask = release_mask(q.shape[0], q.shape[-2]).to(q.device, q.dtype)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return (scores * mask).softmax(dim=-1) @ v
    if method.startswith("pattern:"):
        _, name, backend = method.split(":")
        return fib_attention(q, k, v, bench_pattern(name, q.shape[-2]), mode=mode, backend=backend)
    return fib_attention(q, k, v, pattern, mode=mode, backend=method)


def make_inputs(tokens: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Random (B, h, T, d) q, k, v that require grad, and an output gradient."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch_for(tokens), HEADS, tokens, HEAD_DIM)
    q, k, v, g = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
    return [t.requires_grad_() for t in (q, k, v)], g


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(method, inputs, grad, pattern, mode, device, backward: bool) -> float:
    """Seconds for one forward (and backward) pass."""
    _sync(device)
    start = time.perf_counter()
    if backward:
        out = run_method(method, *inputs, pattern, mode)
        torch.autograd.grad(out, inputs, grad)
    else:
        with torch.no_grad():
            run_method(method, *inputs, pattern, mode)
    _sync(device)
    return time.perf_counter() - start


def warm_caches(method: str, tokens: int, pattern: FibPattern, mode: str, device: str, dtype: torch.dtype) -> None:
    """Build what a model builds once per shape (mask, diagonal plan), outside the measured call."""
    if method.startswith("pattern:"):
        _, name, backend = method.split(":")
        pat = bench_pattern(name, tokens)
        diagonal_plan(pat, tokens - 1)
        if backend == "auto":
            backend = select_backend(tokens, torch.device(device), pattern=pat)
        if backend in ("dense", "fused"):
            pat.mask(tokens - 1, device)
        if backend in ("cpu", "triton"):
            backend_status(backend, device)
        return
    if method == "auto":
        method = select_backend(tokens, torch.device(device))
    if method in ("sdpa+mask", "dense", "fused"):
        pattern.mask(tokens - 1, device)
    if method == "fused":
        from fibpolicy.attention.backends import fused

        if mode == "multiplicative":
            fused._score_factor(pattern, tokens - 1, str(torch.device(device)), dtype, HEAD_DIM**-0.5)
        else:
            fused._score_bias(pattern, tokens - 1, str(torch.device(device)), dtype)
    if method in ("sparse", "cpu", "triton"):
        diagonal_plan(pattern, tokens - 1)
    if method in ("cpu", "triton"):
        backend_status(method, device)  # compiles the kernel (once per machine) and checks it


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_child(method: str, tokens: int, mode: str, device: str, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    inputs, grad = make_inputs(tokens, device, dtype)
    pattern = FibPattern(num_heads=HEADS)
    warm_caches(method, tokens, pattern, mode, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # getrusage's ru_maxrss inherits the parent's size across fork + exec; VmHWM, reset through
        # clear_refs, is this process's own peak.
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS") * 1024
    time_once(method, inputs, grad, pattern, mode, device, True)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_kib("VmHWM") * 1024
    print(json.dumps((peak - base) / 2**20))


def peak_memory_mb(method: str, tokens: int, mode: str, device: str, dtype_name: str) -> float:
    """Peak memory of one forward+backward of ``method`` above its inputs, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--peak-child", method, str(tokens), mode, device, dtype_name]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  (peak-memory probe for {method} at T={tokens} failed: {res.stderr.strip()[-300:]})", flush=True)
        return float("nan")
    return float(res.stdout.strip().splitlines()[-1])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _cuda_peak_mb(method, inputs, grad, pattern, mode, device) -> float:
    """Peak CUDA memory of one forward+backward above what is allocated before it (in this process)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    time_once(method, inputs, grad, pattern, mode, device, True)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def benchmark(tokens_list, methods, mode, device, dtype_name, repeats, memory, budget: Budget | None = None) -> list[dict]:
    """Rows of timings (ms) and peak memory (MiB) per (T, method); a method that cannot run gets a row
    with ``skipped`` (the reason) and no figures."""
    budget = budget or Budget(None)
    dtype = getattr(torch, dtype_name)
    rows = []
    pattern = FibPattern(num_heads=HEADS)
    for tokens in tokens_list:
        if budget.spent():
            budget.skip(f"T={tokens} {dtype_name} (all methods)")
            continue
        inputs, grad = make_inputs(tokens, device, dtype)
        resolved = select_backend(tokens, torch.device(device))
        active = [m for m in methods if not (m == "dense" and tokens > 2000 and device == "cpu" and repeats > 3)]
        failed: dict[str, str] = {}
        warmup_s: dict[str, float] = {}

        def label_of(m, tokens=tokens, resolved=resolved):
            if m == "auto":
                return f"auto ({resolved})"
            return sdpa_label(device, dtype) if m == "sdpa" else method_label(m, tokens)

        for m in list(active):  # warm-up: caches, allocator, lazy init, compiles
            if budget.spent():
                budget.skip(f"T={tokens} {dtype_name} {m}")
                active.remove(m)
                continue
            start = time.perf_counter()
            try:
                why = prepare_method(m, *inputs, pattern)
                if why is None:
                    time_once(m, inputs, grad, pattern, mode, device, True)
                    if device.startswith("cuda"):  # no_grad is its own compile for flex
                        time_once(m, inputs, grad, pattern, mode, device, False)
            except Exception as exc:  # noqa: BLE001 - the row says why, the table goes on
                why = f"failed: {_reason(exc)}"
            warmup_s[m] = time.perf_counter() - start
            if why is not None:
                failed[m] = why
                active.remove(m)
                print(f"T={tokens:5d} {label_of(m):16s} skipped: {why}", flush=True)
        fwd = {m: [] for m in active}
        fwdbwd = {m: [] for m in active}
        n = repeats if tokens < 2000 else max(2, repeats // 2)
        for i in range(n):  # interleaved, so drift on a shared machine hits every method alike
            if i and budget.spent():
                budget.skip(f"T={tokens} {dtype_name}: repeats {i + 1}..{n} (medians of {i})")
                break
            for m in list(active):
                try:
                    fwd[m].append(time_once(m, inputs, grad, pattern, mode, device, False))
                    fwdbwd[m].append(time_once(m, inputs, grad, pattern, mode, device, True))
                except Exception as exc:  # noqa: BLE001
                    failed[m] = f"failed while timed: {_reason(exc)}"
                    active.remove(m)
        for m in methods:
            if m not in active and m not in failed:
                continue  # left out above (dense at large T on CPU) or skipped by the budget
            row = dict(tokens=tokens, batch=inputs[0].shape[0], method=label_of(m), key=m, dtype=dtype_name,
                       warmup_s=warmup_s.get(m, float("nan")))
            if m in failed:
                row.update(fwd_ms=float("nan"), fwdbwd_ms=float("nan"), peak_mb=float("nan"), skipped=failed[m])
                rows.append(row)
                continue
            row.update(fwd_ms=1e3 * statistics.median(fwd[m]), fwdbwd_ms=1e3 * statistics.median(fwdbwd[m]))
            row["peak_mb"] = float("nan")
            if memory and budget.spent():
                budget.skip(f"T={tokens} {dtype_name} {m}: peak memory")
            elif memory and device.startswith("cuda"):
                try:
                    row["peak_mb"] = _cuda_peak_mb(m, inputs, grad, pattern, mode, device)
                except Exception as exc:  # noqa: BLE001
                    print(f"  (peak memory of {m} at T={tokens} failed: {_reason(exc)})", flush=True)
            elif memory:
                row["peak_mb"] = peak_memory_mb(m, tokens, mode, device, dtype_name)
            rows.append(row)
            print(f"T={tokens:5d} B={row['batch']:3d} {row['method']:16s} fwd {row['fwd_ms']:9.1f} ms   "
                  f"fwd+bwd {row['fwdbwd_ms']:9.1f} ms   peak {row['peak_mb']:8.1f} MiB", flush=True)
        del inputs, grad
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _measured(r: dict) -> bool:
    return "skipped" not in r and r["fwdbwd_ms"] == r["fwdbwd_ms"]


def _find(rows, tokens, key, dtype=None):
    return next((r for r in rows if r["tokens"] == tokens and r.get("key") == key and _measured(r)
                 and (dtype is None or r.get("dtype") == dtype)), None)


def markdown(rows: list[dict]) -> str:
    """The table as Markdown: one row per (T, method); a dtype column when rows have several dtypes."""
    many = len({r.get("dtype") for r in rows}) > 1
    lines = [
        f"| T | batch |{' dtype |' if many else ''} method | fwd ms | fwd+bwd ms | × sdpa (fwd+bwd) | peak MiB |",
        f"|---:|---:|{'---|' if many else ''}---|---:|---:|---:|---:|",
    ]
    for r in rows:
        dt = f" {r.get('dtype')} |" if many else ""
        if "skipped" in r:
            lines.append(f"| {r['tokens']} | {r['batch']} |{dt} {r['method']} | skipped: "
                         f"{r['skipped'].replace('|', '/')} | | | |")
            continue
        ref = _find(rows, r["tokens"], "sdpa", r.get("dtype"))
        ratio = f"{r['fwdbwd_ms'] / ref['fwdbwd_ms']:.2f}" if ref else "-"
        lines.append(
            f"| {r['tokens']} | {r['batch']} |{dt} {r['method']} | {r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} | "
            f"{ratio} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The issue's targets, checked against the measured rows (of one dtype)."""
    def get(tokens, key):
        return _find(rows, tokens, key)

    out = []
    for t in (65, 197):
        a, s = get(t, "auto"), get(t, "sdpa")
        if a and s:
            ratio = a["fwdbwd_ms"] / s["fwdbwd_ms"]
            out.append(f"T={t}: auto / sdpa fwd+bwd = {ratio:.2f} (target <= 1.2) {'MET' if ratio <= 1.2 else 'MISSED'}")
    a, s, m = get(4097, "auto"), get(4097, "sdpa"), get(4097, "sdpa+mask")
    if a and s:
        speed = s["fwdbwd_ms"] / a["fwdbwd_ms"]
        out.append(f"T=4097: sdpa / auto fwd+bwd = {speed:.1f}x (target >= 3x) {'MET' if speed >= 3 else 'MISSED'}")
    if a and m and m["peak_mb"] == m["peak_mb"]:
        mem = a["peak_mb"] / m["peak_mb"]
        out.append(f"T=4097: auto peak / sdpa+mask peak = {mem:.3f} (target <= 0.25) {'MET' if mem <= 0.25 else 'MISSED'}")
    a, r = get(197, "auto"), get(197, "release")
    if a and r:
        speed = r["fwdbwd_ms"] / a["fwdbwd_ms"]
        out.append(f"T=197, B=64: release / auto fwd+bwd = {speed:.1f}x (target >= 5x) {'MET' if speed >= 5 else 'MISSED'}")
    return "\n".join(out)


def versus_dense(rows: list[dict]) -> str:
    """Per dtype and T: how many times faster than the ``sdpa`` row the ``triton`` and ``auto`` rows are."""
    out = []
    for dtype in dict.fromkeys(r.get("dtype") for r in rows):
        for tokens in dict.fromkeys(r["tokens"] for r in rows):
            s = _find(rows, tokens, "sdpa", dtype)
            for key in ("triton", "auto"):
                a = _find(rows, tokens, key, dtype)
                if a and s:
                    out.append(f"{dtype} T={tokens:5d}: {a['method']} x dense [{s['method']}]: "
                               f"fwd {s['fwd_ms'] / a['fwd_ms']:.2f}x, fwd+bwd {s['fwdbwd_ms'] / a['fwdbwd_ms']:.2f}x faster")
    return "\n".join(out)


def gpu_targets(rows: list[dict]) -> str:
    """The GPU targets, in bfloat16 against flash SDPA: the sparse row >= 4x faster at T = 4097, and at
    T <= 197 no slower than 1.2x dense. Both fwd and fwd+bwd must meet them."""
    out = []
    for key in ("triton", "auto"):
        big = [(_find(rows, 4097, key, "bfloat16"), _find(rows, 4097, "sdpa", "bfloat16"))]
        small = [(_find(rows, t, key, "bfloat16"), _find(rows, t, "sdpa", "bfloat16")) for t in (65, 197)]
        big = [(a, s) for a, s in big if a and s and s["method"] == "sdpa (flash)"]
        small = [(a, s) for a, s in small if a and s and s["method"] == "sdpa (flash)"]
        for a, s in big:
            f, fb = s["fwd_ms"] / a["fwd_ms"], s["fwdbwd_ms"] / a["fwdbwd_ms"]
            ok = f >= 4 and fb >= 4
            out.append(f"GPU target T=4097 bf16: {a['method']} vs sdpa (flash) = fwd {f:.2f}x, fwd+bwd {fb:.2f}x "
                       f"faster (target >= 4x) {'MET' if ok else 'MISSED'}")
        if small:
            parts, ok = [], True
            for a, s in small:
                f, fb = a["fwd_ms"] / s["fwd_ms"], a["fwdbwd_ms"] / s["fwdbwd_ms"]
                ok = ok and f <= 1.2 and fb <= 1.2
                parts.append(f"T={a['tokens']}: fwd {f:.2f}, fwd+bwd {fb:.2f}")
            out.append(f"GPU target T<=197 bf16: {a['method']} time / sdpa (flash) time = {'; '.join(parts)} "
                       f"(target <= 1.2) {'MET' if ok else 'MISSED'}")
    return "\n".join(out)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main() -> None:
    """Command-line entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "--peak-child":
        method, tokens, mode, device, dtype_name = sys.argv[2:7]
        _peak_child(method, int(tokens), mode, device, dtype_name)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                        help="default: every method that runs on the device (flex: CUDA only)")
    parser.add_argument("--patterns", nargs="*", default=None, choices=PATTERN_NAMES,
                        help="other fixed patterns to time at Fibottention's density (default: all of them "
                             "without --methods, none with it; none: --patterns)")
    parser.add_argument("--pattern-backends", nargs="+", default=["auto"], choices=("auto", *BACKENDS),
                        help="backends the pattern rows run on")
    parser.add_argument("--mode", default="multiplicative", choices=("multiplicative", "additive"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16", "float16"),
                        help="one or more dtypes, measured one after the other")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop starting new sequence lengths, methods and repeats after this many seconds")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    if args.patterns is None:
        args.patterns = list(PATTERN_NAMES) if args.methods is None else []
    if args.methods is None:
        args.methods = [m for m in METHODS if (m not in BACKENDS or backend_status(m, args.device)[0])
                        and (m != "flex" or on_cuda)]
    for name in args.patterns:
        for backend in args.pattern_backends:
            if backend != "auto" and not backend_status(backend, args.device)[0]:
                continue
            if name == "bigbird" and backend in ("fused", "triton"):
                continue  # fixed patterns only: no random keys
            args.methods.append(pattern_method(name, backend))

    budget = Budget(args.max_seconds)
    rows = []
    for dtype_name in args.dtype:
        print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
              f"{dtype_name}, mode {args.mode}, {HEADS} heads x {HEAD_DIM}", flush=True)
        rows += benchmark(args.tokens, args.methods, args.mode, args.device, dtype_name, args.repeats,
                          not args.no_memory, budget)
    print()
    print(markdown(rows))
    for dtype_name in args.dtype:
        lines = targets([r for r in rows if r["dtype"] == dtype_name])
        if lines:
            print()
            print(lines if len(args.dtype) == 1 else f"{dtype_name}:\n{lines}")
    for block in (versus_dense(rows), gpu_targets(rows)):
        if block:
            print()
            print(block)
    if budget.skipped:
        print()
        print(budget.summary())
    if args.json:
        write_json(args.json, _json_safe(rows))


if __name__ == "__main__":
    main()
