"""Every backend computes the dense reference's function, values and gradients, in both modes."""

import pytest
import torch
from timm.layers import Attention

from fibpolicy.attention import (
    BACKENDS,
    FibottentionAttention,
    FibPattern,
    diagonal_plan,
    fib_attention,
    select_backend,
)
from fibpolicy.attention.backends import backend_status, cpu_kernel

# Every backend that runs on CPU tensors here; the Triton one is tested in test_attention_triton.py.
ON_CPU = [b for b in BACKENDS if backend_status(b, "cpu")[0]]
FAST = [b for b in ON_CPU if b != "dense"]


def test_the_compiled_cpu_kernel_builds_here():
    # CI has a C compiler: the fastest CPU path must really be tested, not silently left out.
    assert "cpu" in ON_CPU, backend_status("cpu", "cpu")[1]

CASES = [
    # (prefix tokens, patches, heads, pattern options)
    (1, 196, 12, {}),
    (1, 49, 3, {"layer": 4}),
    (3, 37, 4, {"modified": True, "layer": 1}),  # odd N, registers, main diagonal + duplicate offset
    (0, 23, 2, {}),
    (2, 1, 2, {}),  # a single patch: no offset fits, only prefix keys
    (1, 100, 6, {"preset": "robot", "layer": 7}),
    (1, 64, 4, {"w_min": 2, "w_max": 40}),
]


def _qkv(bsz, heads, tokens, dim, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(bsz, heads, tokens, dim, generator=gen, dtype=dtype).requires_grad_() for _ in range(3)]


# Additive mode without a prefix token may leave rows empty: test_additive_without_prefix_... covers it.
MODE_CASES = [(mode, *case) for mode in ("multiplicative", "additive") for case in CASES if mode == "multiplicative" or case[0]]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode, prefix, patches, heads, options", MODE_CASES)
def test_backend_matches_dense_reference(backend, mode, prefix, patches, heads, options):
    pattern = FibPattern(num_heads=heads, num_prefix_tokens=prefix, **options)
    q, k, v = _qkv(2, heads, prefix + patches, 8, seed=patches)
    grad = torch.randn(2, heads, prefix + patches, 8, dtype=torch.float64)
    ref = fib_attention(q, k, v, pattern, mode=mode, backend="dense")
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    out = fib_attention(q, k, v, pattern, mode=mode, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=f"grad {name}")


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
@pytest.mark.parametrize("backend", FAST)
def test_hand_written_backward_passes_gradcheck(backend, mode):
    pattern = FibPattern(num_heads=2, num_prefix_tokens=1, modified=True, layer=3)
    q, k, v = _qkv(1, 2, 1 + 17, 3, seed=1)
    assert torch.autograd.gradcheck(
        lambda a, b, c: fib_attention(a, b, c, pattern, mode=mode, backend=backend), (q, k, v)
    )


def test_multiplicative_mode_gives_masked_keys_weight_e_to_the_zero():
    # One query, two keys, key 1 masked: softmax over [s0, 0] (multiplicative) vs [s0] (additive).
    pattern = FibPattern(num_heads=1, num_prefix_tokens=1)
    q = torch.tensor([[[[0.0], [2.0], [0.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[1.0], [3.0], [5.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[10.0], [20.0], [30.0]]]], dtype=torch.float64)
    # Patch query 0 (token 1): allowed keys are the prefix (token 0) and patch 1 (offset 1).
    for backend in ON_CPU:
        mult = fib_attention(q, k, v, pattern, mode="multiplicative", backend=backend, scale=1.0)
        add = fib_attention(q, k, v, pattern, mode="additive", backend=backend, scale=1.0)
        s_prefix, s_patch1 = 2.0 * 1.0, 2.0 * 5.0
        w = torch.tensor([s_prefix, 0.0, s_patch1], dtype=torch.float64).softmax(0)  # own key masked: logit 0
        assert mult[0, 0, 1, 0].item() == pytest.approx((w * v[0, 0, :, 0]).sum().item())
        w_add = torch.tensor([s_prefix, s_patch1], dtype=torch.float64).softmax(0)
        assert add[0, 0, 1, 0].item() == pytest.approx((w_add * v[0, 0, [0, 2], 0]).sum().item())


@pytest.mark.parametrize("backend", ["sparse", "cpu"])
def test_sparse_paths_never_build_a_t_by_t_tensor(backend):
    # 100 001 tokens: one dense (h, T, T) float32 tensor would need 80 GB; the sparse paths need ~MBs.
    pattern = FibPattern(num_heads=2, num_prefix_tokens=1)
    q, k, v = _qkv(1, 2, 100_001, 4, dtype=torch.float32)
    out = fib_attention(q, k, v, pattern, backend=backend)
    out.sum().backward()
    assert out.shape == (1, 2, 100_001, 4) and torch.isfinite(q.grad).all()


def test_sparse_plan_counts_match_the_mask():
    pattern = FibPattern(num_heads=6, num_prefix_tokens=2, modified=True, layer=2)
    mask = pattern.mask(81)
    plan = diagonal_plan(pattern, 81)
    assert torch.equal(plan.n_allowed, mask[:, 2:, :].sum(-1).float())
    assert plan.allowed_pairs() == int(mask[:, 2:, :].sum())


def test_additive_without_prefix_rejects_empty_rows():
    pattern = FibPattern(num_heads=2, num_prefix_tokens=0)
    q, k, v = _qkv(1, 2, 3, 4)  # 3 patches: every offset >= 3 for head 2, so its rows are empty
    with pytest.raises(ValueError, match="no allowed key"):
        fib_attention(q, k, v, pattern, mode="additive")
    fib_attention(q, k, v, pattern, mode="multiplicative")  # fine: masked keys still count


def test_fib_attention_argument_errors():
    pattern = FibPattern(num_heads=2)
    q, k, v = _qkv(1, 2, 10, 4)
    with pytest.raises(ValueError, match="backend"):
        fib_attention(q, k, v, pattern, backend="flash9")
    with pytest.raises(ValueError, match="mode"):
        fib_attention(q, k, v, pattern, mode="both")
    with pytest.raises(ValueError, match="heads"):
        fib_attention(q, k, v, FibPattern(num_heads=3))
    with pytest.raises(ValueError, match="shape"):
        fib_attention(q, k[:, :, :5], v, pattern)
    with pytest.raises(ValueError, match="no patch token"):
        fib_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], pattern)


def test_auto_picks_the_compiled_kernel_on_cpu_and_falls_back_without_it(monkeypatch):
    cpu = torch.device("cpu")
    assert select_backend(65, cpu) == select_backend(4097, cpu) == "cpu"
    assert select_backend(4097, cpu, dropout_p=0.1) == "dense"
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_failure", "no C compiler found")
    assert select_backend(65, cpu) == "fused"
    assert select_backend(4097, cpu) == "sparse"
    q, k, v = _qkv(1, 2, 10, 4)
    with pytest.raises(RuntimeError, match="'cpu' cannot run on cpu: no C compiler found"):
        fib_attention(q, k, v, FibPattern(num_heads=2), backend="cpu")
    fib_attention(q, k, v, FibPattern(num_heads=2))  # auto still works


# ----------------------------------------------------------------------------- the module


def test_module_is_a_drop_in_for_timm_attention():
    torch.manual_seed(0)
    dense = Attention(64, num_heads=4, qkv_bias=True)
    fib = FibottentionAttention(64, num_heads=4, qkv_bias=True, layer=2)
    assert [n for n, _ in fib.named_parameters()] == [n for n, _ in dense.named_parameters()]
    fib.load_state_dict(dense.state_dict(), strict=True)
    x = torch.randn(2, 1 + 36, 64)
    assert fib(x).shape == x.shape
    assert not torch.allclose(fib(x), dense(x))  # the pattern is really applied


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_module_backends_agree_and_read_patches_at_run_time(mode):
    torch.manual_seed(1)
    names = ["auto", *ON_CPU]
    modules = {b: FibottentionAttention(48, num_heads=3, mode=mode, backend=b, layer=5) for b in names}
    state = modules["dense"].state_dict()
    for m in modules.values():
        m.load_state_dict(state)
    for tokens in (1 + 16, 1 + 50, 1 + 144):  # one module, several image sizes
        x = torch.randn(2, tokens, 48)
        ref = modules["dense"](x)
        for name, m in modules.items():
            torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5, msg=name)


def test_module_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="backend"):
        FibottentionAttention(64, num_heads=4, backend="triton9")
    with pytest.raises(ValueError, match="mode"):
        FibottentionAttention(64, num_heads=4, mode="both")
    with pytest.raises(ValueError, match="divisible"):
        FibottentionAttention(63, num_heads=4)
    with pytest.raises(ValueError, match="attn_drop"):
        FibottentionAttention(64, num_heads=4, attn_drop=0.1, backend="sparse")
    m = FibottentionAttention(64, num_heads=4)
    with pytest.raises(ValueError, match="attn_mask"):
        m(torch.randn(1, 5, 64), attn_mask=torch.ones(5, 5, dtype=torch.bool))


def test_attention_dropout_runs_on_the_dense_backend_in_training_only():
    m = FibottentionAttention(32, num_heads=2, attn_drop=0.5)
    assert m.resolved_backend(4097, torch.device("cpu")) == "dense"
    m.eval()
    assert m.resolved_backend(4097, torch.device("cpu")) == "cpu"
    x = torch.randn(1, 17, 32)
    torch.testing.assert_close(m(x), m(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backends_match_reference(dtype):
    pattern = FibPattern(num_heads=12, num_prefix_tokens=1, layer=3)
    q, k, v = (t.detach().to("cuda", dtype).requires_grad_() for t in _qkv(2, 12, 197, 64, dtype=torch.float32))
    ref = fib_attention(*(t.double() for t in (q, k, v)), pattern, backend="dense")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for backend in (b for b in BACKENDS if backend_status(b, "cuda")[0]):
        out = fib_attention(q, k, v, pattern, backend=backend)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=backend)


# ----------------------------------------------------------------------------- the compiled CPU kernel


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 24])  # 24: the generic (non-vector) loops
def test_cpu_kernel_float32_matches_float64_reference(mode, head_dim):
    pattern = FibPattern(num_heads=4, num_prefix_tokens=1, layer=2)
    q, k, v = _qkv(3, 4, 1 + 81, head_dim, seed=head_dim)
    grad = torch.randn(3, 4, 1 + 81, head_dim, dtype=torch.float64)
    ref = fib_attention(q, k, v, pattern, mode=mode, backend="dense")
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = fib_attention(*leaves, pattern, mode=mode, backend="cpu")
    assert out.dtype == torch.float32
    grads = torch.autograd.grad(out, leaves, grad.float())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5, msg=f"grad {name}")


def test_cpu_kernel_gives_the_same_numbers_on_any_number_of_threads():
    pattern = FibPattern(num_heads=3, num_prefix_tokens=1)
    q, k, v = _qkv(5, 3, 1 + 64, 16, dtype=torch.float32)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = fib_attention(q, k, v, pattern, backend="cpu")
            results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_cpu_kernel_computes_other_dtypes_in_float32():
    pattern = FibPattern(num_heads=2, num_prefix_tokens=1)
    q, k, v = (t.detach().to(torch.bfloat16).requires_grad_() for t in _qkv(1, 2, 1 + 30, 16))
    out = fib_attention(q, k, v, pattern, backend="cpu")
    ref = fib_attention(*(t.double() for t in (q, k, v)), pattern, backend="dense")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


def test_cpu_kernel_is_compiled_once_into_the_cache_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBPOLICY_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_failure", None)
    assert cpu_kernel.cpu_kernel_status() == (True, "ok")
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].startswith("fib_diagonal-") and built[0].endswith(".so")
    stamp = (tmp_path / built[0]).stat().st_mtime_ns
    monkeypatch.setattr(cpu_kernel, "_library", None)  # a new process: loads, does not rebuild
    assert cpu_kernel.cpu_kernel_status()[0]
    assert (tmp_path / built[0]).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == built


def test_cpu_kernel_reports_why_it_cannot_build(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBPOLICY_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_failure", None)
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: "/bin/false")
    ok, why = cpu_kernel.cpu_kernel_status()
    assert not ok and "compiling the Fibottention CPU kernel failed" in why and "/bin/false" in why
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_failure", None)
    monkeypatch.setenv("FIBPOLICY_CPU_KERNEL", "0")
    assert cpu_kernel.cpu_kernel_status() == (False, "disabled by FIBPOLICY_CPU_KERNEL=0")


def test_backends_refuse_devices_they_cannot_run_on():
    q, k, v = (torch.empty(1, 2, 10, 4, device="meta") for _ in range(3))
    with pytest.raises(RuntimeError, match="'cpu' backend runs on CPU tensors"):
        fib_attention(q, k, v, FibPattern(num_heads=2), backend="cpu")
    q, k, v = _qkv(1, 2, 10, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="'triton' cannot run on cpu"):
        fib_attention(q, k, v, FibPattern(num_heads=2), backend="triton")
