"""The Triton backend computes the dense reference's values and gradients, in both modes.

Without a GPU the kernels run under Triton's CPU interpreter. ``TRITON_INTERPRET=1`` must be set
before triton is imported and would change every later triton use in the pytest process, so the
interpreted checks run in one subprocess: this file executed as a script, which prints one JSON
record per case; the tests below only read those records.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from fibpolicy.attention import FibPattern
from fibpolicy.attention.backends import triton_diag
from fibpolicy.attention.backends.dense import dense_fib_attention
from fibpolicy.attention.backends.triton_diag import triton_available, triton_fib_attention

HAS_TRITON = triton_diag.triton is not None
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
REPO = Path(__file__).resolve().parents[1]

# name: (mode, prefix, patches, heads, head dim, batch, pattern options, forced block rows or None[, dtype])
CASES = {
    "mult-p1-n37-blocks": ("multiplicative", 1, 37, 3, 16, 2, {"layer": 4}, 16),
    "mult-p0-n50-blocks": ("multiplicative", 0, 50, 3, 16, 1, {}, 16),
    "mult-p2-n50": ("multiplicative", 2, 50, 3, 16, 1, {}, None),
    "add-p1-n37-blocks": ("additive", 1, 37, 3, 16, 1, {"layer": 2}, 16),
    "add-p2-n50-blocks": ("additive", 2, 50, 3, 16, 2, {}, 16),
    # Modified head 1 has the main diagonal (offset 0) and a duplicate offset.
    "mult-modified-p2-n37": ("multiplicative", 2, 37, 3, 16, 1, {"modified": True, "layer": 1}, 16),
    "add-modified-p1-n37": ("additive", 1, 37, 3, 16, 1, {"modified": True}, 16),
    "mult-headdim24-n50": ("multiplicative", 1, 50, 3, 24, 1, {}, 16),  # padded, masked head dim
    "add-single-patch": ("additive", 2, 1, 3, 16, 1, {}, None),  # no offset fits: prefix keys only
    "mult-headdim64-n50": ("multiplicative", 1, 50, 3, 64, 1, {}, None),  # the real block sizes
    "mult-bf16-n50": ("multiplicative", 1, 50, 3, 32, 1, {}, 16, "bfloat16"),  # what runs on the GPU
}
SLOW_CASES = {
    "mult-robot-n100": ("multiplicative", 1, 100, 6, 32, 2, {"preset": "robot", "layer": 7}, None),
    "add-modified-p3-n81": ("additive", 3, 81, 4, 32, 1, {"modified": True, "layer": 2}, 32),
    "mult-window-n64-d128": ("multiplicative", 1, 64, 4, 128, 1, {"w_min": 2, "w_max": 40}, None),
    "add-p0-n81": ("additive", 0, 81, 2, 16, 1, {"w_min": 1}, 16),
    "add-bf16-p2-n37": ("additive", 2, 37, 3, 32, 2, {"modified": True}, 16, "bfloat16"),
    "mult-fp16-n50": ("multiplicative", 1, 50, 3, 16, 1, {}, 16, "float16"),
}
# Against a float64 dense reference: float32 kernels by the largest error relative to the largest
# value; half-precision inputs by relative norm (float32 accumulation leaves only the final rounding).
TOL = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}


def _compare(mode, prefix, patches, heads, head_dim, batch, options, block_m, dtype="float32") -> dict:
    """Run one case on CPU tensors: the relative error of the output and of each gradient."""
    triton_diag._BLOCK_M_OVERRIDE = block_m
    pattern = FibPattern(num_heads=heads, num_prefix_tokens=prefix, **options)
    gen = torch.Generator().manual_seed(patches + 1000 * prefix)
    shape = (batch, heads, prefix + patches, head_dim)
    q, k, v, grad = (torch.randn(shape, generator=gen).to(getattr(torch, dtype)) for _ in range(4))
    scale = head_dim**-0.5
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = dense_fib_attention(*ref_in, pattern, mode=mode, scale=scale)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_fib_attention(*leaves, pattern, mode=mode, scale=scale)
    grads = torch.autograd.grad(out, leaves, grad)
    errors = {"dtype": dtype, "dtypes_kept": out.dtype == q.dtype and all(g.dtype == q.dtype for g in grads)}
    for name, a, b in [("out", out, ref), *zip(("dq", "dk", "dv"), grads, ref_grads)]:
        diff = a.double() - b
        if dtype == "float32":
            errors[name] = (diff.abs().max() / b.abs().max().clamp(min=1.0)).item()
        else:
            errors[name] = (diff.norm() / b.norm()).item()
    return errors


def _interpreted_main(which: str) -> None:
    """Subprocess entry point (TRITON_INTERPRET=1 already set): print one JSON object of results."""
    torch.set_num_threads(1)
    results = {"available_on_cpu": triton_available("cpu")}
    for name, case in (CASES if which == "fast" else SLOW_CASES).items():
        try:
            results[name] = _compare(*case)
        except Exception:  # noqa: BLE001 - report every case, not only the first failure
            results[name] = {"error": traceback.format_exc()}
    print("RESULTS " + json.dumps(results))


def _run_interpreted(which: str) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, __file__, which], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


def _check(record: dict) -> None:
    assert "error" not in record, record.get("error")
    assert record["dtypes_kept"], "output and gradients must have the inputs' dtype"
    for name in ("out", "dq", "dk", "dv"):
        assert record[name] < TOL[record["dtype"]], f"{name}: relative error {record[name]:.3g}"


needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.fixture(scope="module")
def interpreted():
    """Results of every fast case, from one interpreter subprocess."""
    return _run_interpreted("fast")


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_kernels_match_dense_reference(interpreted, case):
    _check(interpreted[case])


@needs_triton
def test_available_under_the_interpreter(interpreted):
    assert interpreted["available_on_cpu"] is True


@needs_triton
@pytest.mark.slow
def test_interpreted_kernels_match_dense_reference_more_patterns():
    results = _run_interpreted("slow")
    for case in SLOW_CASES:
        _check(results[case])


# ----------------------------------------------------------------------------- arguments, no kernel


def _qkv(shape, dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


def test_rejects_unsupported_head_dim_dropout_and_dtype():
    pattern = FibPattern(num_heads=2)
    with pytest.raises(ValueError, match="head dim 512"):
        triton_fib_attention(*_qkv((1, 2, 10, 512)), pattern, mode="multiplicative", scale=1.0)
    with pytest.raises(ValueError, match="dropout"):
        triton_fib_attention(*_qkv((1, 2, 10, 16)), pattern, mode="multiplicative", scale=1.0, dropout_p=0.1)
    with pytest.raises(ValueError, match="dtype"):
        triton_fib_attention(*_qkv((1, 2, 10, 16), torch.float64), pattern, mode="additive", scale=1.0)
    with pytest.raises(ValueError, match="mode"):
        triton_fib_attention(*_qkv((1, 2, 10, 16)), pattern, mode="both", scale=1.0)
    with pytest.raises(ValueError, match="heads"):
        triton_fib_attention(*_qkv((1, 3, 10, 16)), pattern, mode="additive", scale=1.0)


@pytest.mark.skipif(INTERPRETING, reason="TRITON_INTERPRET=1 makes CPU tensors valid")
def test_unavailable_for_cpu_tensors_without_the_interpreter():
    assert not triton_available("cpu")
    with pytest.raises(RuntimeError, match="unavailable"):
        triton_fib_attention(*_qkv((1, 2, 10, 16)), FibPattern(num_heads=2), mode="additive", scale=1.0)


def test_module_imports_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    name = "fibpolicy.attention.backends._triton_diag_without_triton"
    spec = importlib.util.spec_from_file_location(name, triton_diag.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.triton is None
    assert not module.triton_available("cuda")
    with pytest.raises(RuntimeError, match="not installed"):
        module.triton_fib_attention(*_qkv((1, 2, 10, 16)), FibPattern(num_heads=2), mode="additive", scale=1.0)


# ----------------------------------------------------------------------------- the real CUDA path

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRETING or not HAS_TRITON,
    reason="needs a CUDA device and triton (and checks the compiled kernels, not the interpreter)",
)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("tokens", [197, 1025])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_cuda_kernels_match_dense_reference(mode, dtype, tokens):
    pattern = FibPattern(num_heads=12, num_prefix_tokens=1, layer=3)
    gen = torch.Generator().manual_seed(tokens)
    shape = (2, 12, tokens, 64)
    q, k, v, grad = (torch.randn(shape, generator=gen).to("cuda", dtype) for _ in range(4))
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = dense_fib_attention(*ref_in, pattern, mode=mode, scale=0.125)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_fib_attention(*leaves, pattern, mode=mode, scale=0.125)
    grads = torch.autograd.grad(out, leaves, grad)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
        for name, g, r in zip("qkv", grads, ref_grads):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4, msg=f"grad {name}")
    else:
        # bf16 keeps 8 bits: compare relative norms (float32 accumulation leaves only the final rounding).
        for name, a, b in [("out", out, ref), *zip(("dq", "dk", "dv"), grads, ref_grads)]:
            rel = ((a.double() - b).norm() / b.norm()).item()
            assert rel < 1e-2, f"{name}: relative error {rel:.3g}"


@pytest.mark.cuda
@requires_cuda
def test_cuda_path_never_builds_a_t_by_t_tensor():
    # 65 537 tokens: one (T, T) bf16 score matrix per head would take 8.6 GB.
    pattern = FibPattern(num_heads=2, num_prefix_tokens=1)
    q, k, v = (torch.randn(1, 2, 65_537, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = triton_fib_attention(q, k, v, pattern, mode="multiplicative", scale=0.125)
    out.float().sum().backward()
    torch.cuda.synchronize()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    assert torch.cuda.max_memory_allocated() - base < 2**30


if __name__ == "__main__":
    _interpreted_main(sys.argv[1] if len(sys.argv) > 1 else "fast")
