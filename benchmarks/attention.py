"""Speed and peak memory of the Fibottention backends against dense attention and the release's method.

    python benchmarks/attention.py                      # the full table (CPU: ~10 minutes)
    python benchmarks/attention.py --tokens 65 197 --mode additive --device cuda --dtype bfloat16

Per sequence length T (12 heads, head dim 64, batch scaled as 64 * (197 / T)^2 so every row does
about the same dense work) it prints forward and forward+backward times (median of interleaved
repeats) and the peak memory of one forward+backward of the attention op, for:

- ``sdpa``: ``F.scaled_dot_product_attention`` without a mask (the speed of dense attention);
- ``sdpa+mask``: the same with the (h, T, T) boolean Fibottention mask (additive semantics);
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
once, over its resident set with inputs allocated and per-shape caches built; on CUDA it is ``torch.cuda.max_memory_allocated`` above the inputs.
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

HEADS, HEAD_DIM = 12, 64
DEFAULT_TOKENS = (65, 197, 785, 1569, 4097)
METHODS = ("sdpa", "sdpa+mask", "release", *BACKENDS, "auto")
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


def run_method(method: str, q, k, v, pattern: FibPattern, mode: str) -> torch.Tensor:
    """One forward of ``method`` on (B, h, T, d) inputs."""
    if method == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
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


def benchmark(tokens_list, methods, mode, device, dtype_name, repeats, memory) -> list[dict]:
    """Rows of timings (ms) and peak memory (MiB) per (T, method)."""
    dtype = getattr(torch, dtype_name)
    rows = []
    pattern = FibPattern(num_heads=HEADS)
    for tokens in tokens_list:
        inputs, grad = make_inputs(tokens, device, dtype)
        resolved = select_backend(tokens, torch.device(device))
        active = [m for m in methods if not (m == "dense" and tokens > 2000 and device == "cpu" and repeats > 3)]
        for m in active:  # warm-up: caches, allocator, lazy init
            time_once(m, inputs, grad, pattern, mode, device, True)
        fwd = {m: [] for m in active}
        fwdbwd = {m: [] for m in active}
        n = repeats if tokens < 2000 else max(2, repeats // 2)
        for _ in range(n):  # interleaved, so drift on a shared machine hits every method alike
            for m in active:
                fwd[m].append(time_once(m, inputs, grad, pattern, mode, device, False))
                fwdbwd[m].append(time_once(m, inputs, grad, pattern, mode, device, True))
        for m in active:
            label = method_label(m, tokens) if m != "auto" else f"auto ({resolved})"
            row = dict(
                tokens=tokens, batch=inputs[0].shape[0], method=label,
                fwd_ms=1e3 * statistics.median(fwd[m]), fwdbwd_ms=1e3 * statistics.median(fwdbwd[m]),
            )
            row["peak_mb"] = peak_memory_mb(m, tokens, mode, device, dtype_name) if memory else float("nan")
            rows.append(row)
            print(f"T={tokens:5d} B={row['batch']:3d} {row['method']:16s} fwd {row['fwd_ms']:9.1f} ms   "
                  f"fwd+bwd {row['fwdbwd_ms']:9.1f} ms   peak {row['peak_mb']:8.1f} MiB", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table as Markdown: one row per (T, method)."""
    lines = [
        "| T | batch | method | fwd ms | fwd+bwd ms | × sdpa (fwd+bwd) | peak MiB |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = next(x for x in rows if x["tokens"] == r["tokens"] and x["method"] == "sdpa")
        lines.append(
            f"| {r['tokens']} | {r['batch']} | {r['method']} | {r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} | "
            f"{r['fwdbwd_ms'] / ref['fwdbwd_ms']:.2f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The issue's targets, checked against the measured rows."""
    def get(tokens, prefix):
        return next((r for r in rows if r["tokens"] == tokens and r["method"].startswith(prefix)), None)

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


def main() -> None:
    """Command-line entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "--peak-child":
        method, tokens, mode, device, dtype_name = sys.argv[2:7]
        _peak_child(method, int(tokens), mode, device, dtype_name)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                        help="default: every method that runs on the device")
    parser.add_argument("--patterns", nargs="*", default=list(PATTERN_NAMES), choices=PATTERN_NAMES,
                        help="other fixed patterns to time at Fibottention's density (none: --patterns)")
    parser.add_argument("--pattern-backends", nargs="+", default=["auto"], choices=("auto", *BACKENDS),
                        help="backends the pattern rows run on")
    parser.add_argument("--mode", default="multiplicative", choices=("multiplicative", "additive"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.methods is None:
        args.methods = [m for m in METHODS if m not in BACKENDS or backend_status(m, args.device)[0]]
    for name in args.patterns:
        for backend in args.pattern_backends:
            if backend != "auto" and not backend_status(backend, args.device)[0]:
                continue
            if name == "bigbird" and backend in ("fused", "triton"):
                continue  # fixed patterns only: no random keys
            args.methods.append(pattern_method(name, backend))

    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.dtype}, mode {args.mode}, {HEADS} heads x {HEAD_DIM}", flush=True)
    rows = benchmark(args.tokens, args.methods, args.mode, args.device, args.dtype, args.repeats, not args.no_memory)
    print()
    print(markdown(rows))
    print()
    print(targets(rows))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
