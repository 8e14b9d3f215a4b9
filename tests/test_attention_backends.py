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

FAST = [b for b in BACKENDS if b != "dense"]

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
    for backend in BACKENDS:
        mult = fib_attention(q, k, v, pattern, mode="multiplicative", backend=backend, scale=1.0)
        add = fib_attention(q, k, v, pattern, mode="additive", backend=backend, scale=1.0)
        s_prefix, s_patch1 = 2.0 * 1.0, 2.0 * 5.0
        w = torch.tensor([s_prefix, 0.0, s_patch1], dtype=torch.float64).softmax(0)  # own key masked: logit 0
        assert mult[0, 0, 1, 0].item() == pytest.approx((w * v[0, 0, :, 0]).sum().item())
        w_add = torch.tensor([s_prefix, s_patch1], dtype=torch.float64).softmax(0)
        assert add[0, 0, 1, 0].item() == pytest.approx((w_add * v[0, 0, [0, 2], 0]).sum().item())


def test_sparse_path_never_builds_a_t_by_t_tensor():
    # 100 001 tokens: one dense (h, T, T) float32 tensor would need 80 GB; the sparse path needs ~MBs.
    pattern = FibPattern(num_heads=2, num_prefix_tokens=1)
    q, k, v = _qkv(1, 2, 100_001, 4, dtype=torch.float32)
    out = fib_attention(q, k, v, pattern, backend="sparse")
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


def test_auto_picks_fused_for_short_and_sparse_for_long_sequences():
    cpu = torch.device("cpu")
    assert select_backend(65, cpu) == "fused"
    assert select_backend(4097, cpu) == "sparse"
    assert select_backend(4097, cpu, dropout_p=0.1) == "dense"


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
    modules = {b: FibottentionAttention(48, num_heads=3, mode=mode, backend=b, layer=5) for b in FibottentionAttention.backends}
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
    assert m.resolved_backend(4097, torch.device("cpu")) == "sparse"
    x = torch.randn(1, 17, 32)
    torch.testing.assert_close(m(x), m(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backends_match_reference(dtype):
    pattern = FibPattern(num_heads=12, num_prefix_tokens=1, layer=3)
    q, k, v = (t.detach().to("cuda", dtype).requires_grad_() for t in _qkv(2, 12, 197, 64, dtype=torch.float32))
    ref = fib_attention(*(t.double() for t in (q, k, v)), pattern, backend="dense")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for backend in BACKENDS:
        out = fib_attention(q, k, v, pattern, backend=backend)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
