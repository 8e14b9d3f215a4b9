"""Correctness of the Triton backend against the float64 dense reference, on the attention benchmark's shapes.

    python benchmarks/triton_check.py                          # CUDA: 5 T x 2 modes x 2 dtypes
    python benchmarks/triton_check.py --max-seconds 50 --json triton_check.json
    python benchmarks/triton_check.py --interpret              # CPU, Triton interpreter, T in 65, 197

Per row (T, mode, dtype) it draws fresh random q, k, v and an output gradient (12 heads, head dim 64),
runs ``triton_fib_attention`` forward and backward, and compares the output and the gradients of q, k
and v with ``dense_fib_attention`` evaluated in float64 on the same (rounded) inputs, by the relative
error ||x - ref|| / ||ref||. A row passes when every error is below the dtype's tolerance (float32:
1e-3; bfloat16: 2e-2), every result is finite and has the inputs' dtype. On CUDA the caching
allocator is first filled with NaN-poisoned blocks of the results' sizes, so that an element a kernel
forgets to write shows up as a non-finite value (best effort: the allocator decides what is reused).

Without CUDA it prints "skipped: no CUDA" and exits 0, unless ``--interpret`` is given: then the
kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (set before triton is imported) at small T
only. Exit status 1 when any row fails.
"""

from __future__ import annotations

import os
import sys

# The interpreter is chosen when triton is imported, so this must precede every import of torch/triton.
if "--interpret" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"

import argparse
import math
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibpolicy.atomic import write_json
from fibpolicy.attention import FibPattern
from fibpolicy.attention.backends import (
    MODES,
    triton_diag,
)
from fibpolicy.attention.backends.dense import dense_fib_attention

from budget import Budget  # benchmarks/, the script's own directory

HEADS, HEAD_DIM = 12, 64
DEFAULT_TOKENS = (65, 197, 785, 1569, 4097)
INTERPRET_TOKENS = (65, 197)
DTYPES = ("float32", "bfloat16")
# Relative-norm tolerances against the float64 reference. The kernels accumulate in float32 (row-wise
# dot products); 1e-3 also leaves room for tf32 dots (~3e-4). bfloat16 keeps 8 bits of mantissa.
TOL = {"float32": 1e-3, "bfloat16": 2e-2, "float16": 2e-3}
FIELDS = ("out", "dq", "dk", "dv")


def batch_for(tokens: int, interpret: bool) -> int:
    """Small batches: the float64 reference holds a few (B, h, T, T) tensors (B=2, T=4097: ~3 GB each)."""
    if interpret:
        return 1
    return 4 if tokens <= 197 else 2


def _seed(tokens: int, mode: str, dtype: str) -> int:
    # A different stream per row: no row shares its inputs with another.
    return 1_000 * tokens + 10 * MODES.index(mode) + list(TOL).index(dtype) + 7


def _poison_allocator(shape, dtype, device) -> None:
    """Leave NaN-filled blocks of the results' sizes in the CUDA caching allocator (best effort)."""
    if torch.device(device).type != "cuda":
        return
    blocks = [torch.full(shape, float("nan"), dtype=dtype, device=device) for _ in range(6)]
    blocks += [torch.full(shape, float("nan"), dtype=torch.float32, device=device) for _ in range(3)]
    del blocks


def check_row(tokens: int, mode: str, dtype_name: str, device: str, interpret: bool) -> dict:
    """One (T, mode, dtype) comparison; returns the row (errors, finiteness, verdict)."""
    dtype = getattr(torch, dtype_name)
    batch = batch_for(tokens, interpret)
    row = dict(tokens=tokens, batch=batch, mode=mode, dtype=dtype_name, tol=TOL[dtype_name])
    start = time.perf_counter()
    pattern = FibPattern(num_heads=HEADS)
    gen = torch.Generator(device=device).manual_seed(_seed(tokens, mode, dtype_name))
    shape = (batch, HEADS, tokens, HEAD_DIM)
    q, k, v, grad = (torch.randn(shape, generator=gen, device=device).to(dtype) for _ in range(4))
    if not all(bool(t.abs().amax() > 0) for t in (q, k, v, grad)):
        raise RuntimeError("random inputs came out all zero")
    scale = HEAD_DIM**-0.5

    _poison_allocator(shape, dtype, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_diag.triton_fib_attention(*leaves, pattern, mode=mode, scale=scale)
    grads = torch.autograd.grad(out, leaves, grad)
    got = (out.detach(), *grads)
    del leaves, out, grads

    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = dense_fib_attention(*ref_in, pattern, mode=mode, scale=scale)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    want = (ref.detach(), *ref_grads)
    del ref_in, ref, ref_grads

    row["dtypes_kept"] = all(g.dtype == dtype for g in got)
    row["finite"] = all(bool(torch.isfinite(g).all()) for g in got)
    for name, a, b in zip(FIELDS, got, want):
        row[name] = ((a.double() - b).norm() / b.norm()).item()
    errors_ok = all(row[name] < row["tol"] for name in FIELDS)  # NaN compares False: a failure
    row["passed"] = bool(errors_ok and row["finite"] and row["dtypes_kept"])
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    row["seconds"] = time.perf_counter() - start
    return row


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.2e}" if isinstance(x, float) else str(x))


def markdown(rows: list[dict]) -> str:
    """One line per row: errors of the output and of each gradient, and the verdict."""
    lines = [
        "| T | batch | mode | dtype | out | dq | dk | dv | tol | finite | result |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            result = "FAIL (" + r["error"].strip().splitlines()[-1][:120].replace("|", "/") + ")"
        else:
            result = "pass" if r["passed"] else "FAIL"
        lines.append(
            f"| {r['tokens']} | {r.get('batch', '-')} | {r['mode']} | {r['dtype']} | "
            + " | ".join(_fmt(r.get(f)) for f in FIELDS)
            + f" | {r['tol']:.0e} | {_fmt(r.get('finite'))} | {result} |"
        )
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN / Infinity
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --interpret)")
    parser.add_argument("--tokens", type=int, nargs="+", default=None,
                        help=f"default: {' '.join(map(str, DEFAULT_TOKENS))} (--interpret: "
                             f"{' '.join(map(str, INTERPRET_TOKENS))})")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=tuple(TOL))
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop starting new rows once this many seconds have passed (they are listed as skipped)")
    parser.add_argument("--interpret", action="store_true",
                        help="run the kernels on CPU under TRITON_INTERPRET=1 (small T only)")
    args = parser.parse_args(argv)
    budget = Budget(args.max_seconds)

    info = dict(torch=torch.__version__, triton=getattr(triton_diag.triton, "__version__", None),
                interpret=args.interpret, tolerances={d: TOL[d] for d in args.dtypes})

    def finish(rows, skipped, status, note=None) -> int:
        if args.json:
            write_json(args.json, _json_safe(dict(info, rows=rows, skipped=skipped, note=note,
                                                  passed=status == 0 and note is None)))
        return status

    if args.interpret:
        if args.device not in (None, "cpu"):
            parser.error("--interpret runs on CPU tensors; drop --device or use --device cpu")
        device = "cpu"
        tokens_list = args.tokens or list(INTERPRET_TOKENS)
        too_big = [t for t in tokens_list if t > max(INTERPRET_TOKENS)]
        if too_big:
            parser.error(f"--interpret runs small T only (<= {max(INTERPRET_TOKENS)}), got {too_big}")
        if triton_diag.triton is None:
            print("skipped: triton is not installed")
            return finish([], [], 0, "skipped: triton is not installed")
        torch.set_num_threads(min(2, torch.get_num_threads()))
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            print("skipped: no CUDA (use --interpret to run the kernels on CPU under the Triton interpreter)")
            return finish([], [], 0, "skipped: no CUDA")
        tokens_list = args.tokens or list(DEFAULT_TOKENS)
        if triton_diag.triton is None:
            print("FAIL: triton is not installed, the 'triton' backend cannot run on this CUDA machine")
            return finish([], [], 1, "triton is not installed")
        info["gpu"] = torch.cuda.get_device_name(device)

    print(f"torch {info['torch']}, triton {info['triton']}, device {device}"
          f"{' (' + info['gpu'] + ')' if 'gpu' in info else ''}{', TRITON_INTERPRET=1' if args.interpret else ''}; "
          f"{HEADS} heads x {HEAD_DIM}; tolerances {info['tolerances']}", flush=True)
    plan = [(t, m, d) for t in tokens_list for d in args.dtypes for m in args.modes]
    rows, skipped = [], []
    for i, (tokens, mode, dtype_name) in enumerate(plan):
        if budget.spent():
            skipped = [dict(tokens=t, mode=m, dtype=d) for t, m, d in plan[i:]]
            for t, m, d in plan[i:]:
                budget.skip(f"T={t} {m} {d}", announce=False)
            break
        try:
            row = check_row(tokens, mode, dtype_name, device, args.interpret)
        except Exception:  # noqa: BLE001 - report the row and go on with the others
            row = dict(tokens=tokens, batch=batch_for(tokens, args.interpret), mode=mode, dtype=dtype_name,
                       tol=TOL[dtype_name], passed=False, error=traceback.format_exc())
        rows.append(row)
        if "error" in row:
            print(f"T={tokens:5d} {mode:14s} {dtype_name:8s} ERROR {row['error'].strip().splitlines()[-1]}", flush=True)
        else:
            errs = "  ".join(f"{f} {row[f]:.2e}" for f in FIELDS)
            print(f"T={tokens:5d} {mode:14s} {dtype_name:8s} {errs}  finite {row['finite']}  "
                  f"{'pass' if row['passed'] else 'FAIL'}  ({row['seconds']:.1f} s)", flush=True)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()

    print()
    print(markdown(rows))
    print()
    failed = [r for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed, {len(skipped)} not run "
          f"in {budget.elapsed:.1f} s")
    if skipped:
        print(budget.summary())
    return finish(rows, skipped, 1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
