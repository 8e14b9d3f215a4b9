"""The sparse-attention pattern zoo: masks against constructions written here, backends against the
dense reference (float64 values and gradients), random keys, densities, registry round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import timm
import torch

import fibpolicy  # noqa: F401  (registers the timm models)
from fibpolicy.attention import (
    PATTERNS,
    FibottentionAttention,
    FibPattern,
    density,
    diagonal_plan,
    fib_attention,
    make_pattern,
    match_density,
    pattern_name,
    pattern_spec,
    select_backend,
)
from fibpolicy.attention.backends import backend_status, triton_diag

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
ON_CPU = [b for b in ("sparse", "cpu", "gather", "fused") if backend_status(b, "cpu")[0]]


# ------------------------------------------------------------------------ independent constructions


def _rc(i: int, w: int) -> tuple[int, int]:
    return divmod(i, w)


def _with_prefix(block: torch.Tensor, p: int) -> torch.Tensor:
    heads, n, _ = block.shape
    full = torch.ones(heads, p + n, p + n, dtype=torch.bool)
    full[:, p:, p:] = block
    return full


def _build(heads: int, n: int, allowed) -> torch.Tensor:
    return torch.tensor([[[allowed(h, q, k) for k in range(n)] for q in range(n)] for h in range(heads)])


def _natten_axis(x: int, length: int, k: int, d: int) -> set[int]:
    """Keys of coordinate x on one axis under NATTEN's rule (spec section 3), written from the definition."""
    group, pos = x % d, x // d
    members = list(range(group, length, d))
    left, right = k // 2, k // 2 + k % 2 - 1
    centre = min(max(pos, left), len(members) - 1 - right)
    return {members[i] for i in range(centre - left, centre + right + 1)}


def reference_mask(name: str, heads: int, grid: tuple[int, int], p: int, **o) -> torch.Tensor:
    h_, w = grid
    n = h_ * w
    if name == "longformer":
        dil = o.get("dilation", 1)
        dil = dil if isinstance(dil, (list, tuple)) else [dil] * heads
        win = o.get("window", 1)
        block = _build(heads, n, lambda h, q, k: (k - q) % dil[h] == 0 and abs(k - q) <= win * dil[h])
    elif name in ("bigbird", "bigbird_fixed"):
        block = _build(heads, n, lambda h, q, k: abs(k - q) <= o.get("window", 1))
    elif name == "strided":
        stride = o.get("stride") or int(n**0.5)
        block = _build(heads, n, lambda h, q, k: (q - k) % stride == 0 or abs(q - k) <= o.get("local", 0))
    elif name == "axial":
        axis = o.get("axis", "alternate")

        def allowed(h, q, k):
            (rq, cq), (rk, ck) = _rc(q, w), _rc(k, w)
            a = axis if axis != "alternate" else ("row" if h % 2 == 0 else "column")
            return (a in ("row", "both") and rq == rk) or (a in ("column", "both") and cq == ck)

        block = _build(heads, n, allowed)
    elif name == "window2d":
        ks = o.get("kernel_size", 3)
        ks = ks if isinstance(ks, (list, tuple)) else [ks] * heads
        ds = o.get("dilation", 1)
        ds = ds if isinstance(ds, (list, tuple)) else [ds] * heads
        if o.get("border", "zero") == "zero":

            def allowed(h, q, k):
                (rq, cq), (rk, ck) = _rc(q, w), _rc(k, w)
                left, right = ks[h] // 2, ks[h] // 2 + ks[h] % 2 - 1
                dr, dc = rk - rq, ck - cq
                return (dr % ds[h] == 0 and dc % ds[h] == 0 and -left <= dr // ds[h] <= right
                        and -left <= dc // ds[h] <= right)
        else:

            def allowed(h, q, k):
                (rq, cq), (rk, ck) = _rc(q, w), _rc(k, w)
                return rk in _natten_axis(rq, h_, ks[h], ds[h]) and ck in _natten_axis(cq, w, ks[h], ds[h])

        block = _build(heads, n, allowed)
    else:
        raise AssertionError(name)
    return _with_prefix(block, p)


MASK_CASES = [
    ("longformer", 3, (6, 6), 1, {}),
    ("longformer", 3, (5, 7), 2, {"window": 2, "dilation": [1, 2, 3]}),
    ("bigbird", 2, (6, 6), 1, {"window": 2}),
    ("strided", 2, (6, 6), 1, {}),
    ("strided", 2, (5, 8), 0, {"stride": 7, "local": 1}),
    ("axial", 4, (5, 7), 1, {}),
    ("axial", 2, (6, 6), 1, {"axis": "both"}),
    ("window2d", 3, (7, 7), 1, {}),
    ("window2d", 3, (6, 8), 1, {"kernel_size": [3, 4, 2], "dilation": [1, 2, 1]}),
    ("window2d", 3, (7, 7), 1, {"kernel_size": [3, 4, 2], "dilation": [1, 1, 3], "border": "clamp"}),
    ("window2d", 2, (8, 9), 2, {"kernel_size": 3, "dilation": 2, "border": "clamp"}),
]


@pytest.mark.parametrize("name, heads, grid, prefix, options", MASK_CASES)
def test_mask_matches_an_independent_construction(name, heads, grid, prefix, options):
    extra = {"grid": grid} if name in ("axial", "window2d") and grid[0] != grid[1] else {}
    pattern = make_pattern(name, num_heads=heads, num_prefix_tokens=prefix, **options, **extra)
    got = pattern.mask(grid[0] * grid[1])
    want = reference_mask(name, heads, grid, prefix, **options)
    assert got.shape == want.shape
    assert torch.equal(got, want), f"{(got != want).nonzero()[:5].tolist()}"


def test_neighbourhood_borders_zero_padded_versus_clamped():
    # Spec section 3: on 14 x 14 with k = 7 a zero-padded corner query keeps 16 of 49 keys; clamped,
    # every query keeps 49, and only 64 of the 196 queries have an unshifted (centred) window.
    zero = make_pattern("window2d", num_heads=1, kernel_size=7, num_prefix_tokens=0).mask(196)[0]
    clamp_pattern = make_pattern("window2d", num_heads=1, kernel_size=7, border="clamp", num_prefix_tokens=0)
    clamp = clamp_pattern.mask(196)[0]
    assert zero[0].sum() == 16 and zero[7 * 14 + 7].sum() == 49
    assert (clamp.sum(-1) == 49).all()
    anchors = clamp_pattern.anchors(196)[0]
    rows, cols = torch.arange(196) // 14, torch.arange(196) % 14
    centred = anchors == (rows - 3) * 14 + (cols - 3)
    assert int(centred.sum()) == 64


def test_2d_patterns_need_the_grid_and_clamp_needs_room():
    with pytest.raises(ValueError, match="not a square"):
        make_pattern("window2d", num_heads=1).mask(50)
    with pytest.raises(ValueError, match="grid 5x10 has 50"):
        make_pattern("axial", num_heads=1, grid=(5, 10)).mask(49)
    with pytest.raises(ValueError, match="kernel 4 x dilation 2"):
        make_pattern("window2d", num_heads=1, kernel_size=4, dilation=2, border="clamp").mask(49)


# ------------------------------------------------------------------------------------------ densities


def test_densities_reproduce_the_benchmark_figures():
    # Spec section 2: at ViT-B/16 (14 x 14 patches, 12 heads) the patch-block sparsities are
    # Longformer 98.47 %, BigBird 97.96 %, Fibottention 98.01 %.
    assert density(make_pattern("longformer", num_heads=12), 14) == pytest.approx((196 + 2 * 195) / 196**2)
    assert density(make_pattern("bigbird", num_heads=12), 14) == pytest.approx((196 + 2 * 195 + 196) / 196**2)
    assert round(100 * (1 - density(make_pattern("longformer", num_heads=12), 14)), 2) == 98.47
    assert round(100 * (1 - density(make_pattern("bigbird", num_heads=12), 14)), 2) == 97.96
    assert round(100 * (1 - density(FibPattern(num_heads=12), 14)), 2) == 98.01
    # Zero-padded 3 x 3 on 10 x 10: (3 * 10 - 2)^2 pairs; axial columns: exactly 1 / W.
    assert density(make_pattern("window2d", num_heads=3), 10) == pytest.approx(28**2 / 100**2)
    assert density(make_pattern("axial", num_heads=2, axis="column"), (6, 9)) == pytest.approx(1 / 9)


def test_density_counts_what_a_query_can_draw():
    # 3 patches, band 1 keeps 7 of 9 pairs; one random key can only add the 2 missing corner pairs.
    pattern = make_pattern("bigbird", num_heads=1, num_random_keys=3)
    assert density(pattern, (1, 3)) == pytest.approx(1.0)


def test_match_density_picks_the_nearest_knob():
    target = density(FibPattern(num_heads=12), 14)
    pattern = match_density("longformer", 14, target, num_heads=12)
    assert pattern.window == 1
    window = match_density("window2d", 14, 0.045, num_heads=3)
    assert window.kernel_size == (3, 3, 3)


# ---------------------------------------------------------------------------------- random keys


def test_random_keys_avoid_kept_keys_self_and_repeats_and_are_redrawn():
    torch.manual_seed(0)
    pattern = make_pattern("bigbird", num_heads=2, num_random_keys=3, window=1)
    n = 20
    first = pattern.sample_random_keys(4, n)
    second = pattern.sample_random_keys(4, n)
    assert first.shape == (4, 2, n, 3)
    assert not torch.equal(first, second)  # redrawn every call
    q = torch.arange(n).view(1, 1, n, 1)
    assert ((first >= 0) & (first < n)).all()
    assert ((first - q).abs() > 1).all()  # never a band key, never the query itself
    s = first.sort(dim=-1).values
    assert (s[..., 1:] != s[..., :-1]).all()  # distinct per query


def test_random_keys_run_out_gracefully():
    pattern = make_pattern("bigbird", num_heads=1, num_random_keys=4, window=1)
    keys = pattern.sample_random_keys(2, 4)
    # Query 0 keeps {0, 1}: only 2 and 3 are left; the other slots say -1.
    assert sorted(keys[0, 0, 0].tolist()) == [-1, -1, 2, 3]


def test_fixed_random_keys_are_static_shared_and_differ_by_layer():
    a = make_pattern("bigbird_fixed", num_heads=2, layer=0, num_random_keys=2)
    b = make_pattern("bigbird_fixed", num_heads=2, layer=1, num_random_keys=2)
    k1, k2 = a.sample_random_keys(3, 30), a.sample_random_keys(3, 30)
    assert torch.equal(k1, k2) and torch.equal(k1[0], k1[2])
    assert not torch.equal(k1[0], b.sample_random_keys(1, 30)[0])


# ---------------------------------------------------------------------- backends vs dense (float64)

BACKEND_CASES = [
    ("longformer", 3, 36, 1, {"window": 2, "dilation": [1, 2, 3]}),
    ("strided", 2, 36, 1, {"stride": 5, "local": 1}),
    ("axial", 3, 35, 1, {"grid": [5, 7]}),
    ("window2d", 3, 36, 1, {"kernel_size": [3, 2, 4], "dilation": [1, 2, 1]}),
    ("window2d", 3, 36, 2, {"kernel_size": [3, 2, 3], "dilation": [1, 2, 2], "border": "clamp"}),
    ("bigbird", 2, 30, 1, {"num_random_keys": 2}),
    ("bigbird_fixed", 2, 30, 1, {}),
    ("window2d", 2, 25, 0, {"kernel_size": 3}),  # no prefix: the main diagonal keeps every row non-empty
]


def _qkv(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
@pytest.mark.parametrize("name, heads, n, prefix, options", BACKEND_CASES)
def test_backends_match_the_dense_reference(name, heads, n, prefix, options, mode):
    pattern = make_pattern(name, num_heads=heads, num_prefix_tokens=prefix, layer=1, **options)
    shape = (2, heads, prefix + n, 8)
    q, k, v = _qkv(shape, seed=n + prefix)
    grad = torch.randn(shape, dtype=torch.float64)
    random_keys = pattern.sample_random_keys(2, n)
    ref = fib_attention(q, k, v, pattern, mode=mode, backend="dense", random_keys=random_keys)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    backends = [b for b in ON_CPU if random_keys is None or b != "fused"]
    assert "cpu" in backends and "sparse" in backends and "gather" in backends
    for backend in backends:
        out = fib_attention(q, k, v, pattern, mode=mode, backend=backend, random_keys=random_keys)
        grads = torch.autograd.grad(out, (q, k, v), grad)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"{backend} values")
        for g_name, g, r in zip("qkv", grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=f"{backend} grad {g_name}")


def test_dense_reference_is_the_masked_softmax_it_claims():
    # Additive mode: each query's softmax over exactly the mask's keys (a check of the reference itself).
    pattern = make_pattern("window2d", num_heads=1, kernel_size=3, num_prefix_tokens=1)
    q, k, v = (t.detach() for t in _qkv((1, 1, 17, 4), 3))
    out = fib_attention(q, k, v, pattern, mode="additive", backend="dense", scale=1.0)
    mask = reference_mask("window2d", 1, (4, 4), 1)[0]
    row = 5
    keys = mask[row].nonzero().flatten()
    expected = torch.softmax(q[0, 0, row] @ k[0, 0, keys].T, dim=-1) @ v[0, 0, keys]
    torch.testing.assert_close(out[0, 0, row], expected)


def test_fibottention_keeps_its_own_diagonal_path():
    plan = diagonal_plan(FibPattern(num_heads=3), 49)
    assert plan.keys is None and plan.col_width == 0 and plan.anchors is None


def test_triton_refuses_random_keys_and_auto_routes_them():
    pattern = make_pattern("bigbird", num_heads=2)
    q = torch.randn(1, 2, 10, 16)
    with pytest.raises(ValueError, match="random keys"):
        fib_attention(q, q, q, pattern, mode="additive", backend="fused")
    assert select_backend(10, torch.device("cpu"), pattern=pattern) == "cpu"
    assert select_backend(10, torch.device("cuda"), pattern=pattern) == "gather"
    if triton_diag.triton is not None:
        with pytest.raises(ValueError, match="fixed patterns only"):
            triton_diag._check_inputs(q, q, q, pattern, "additive", 0.0)


# -------------------------------------------------------------- triton kernels under the interpreter

TRITON_CASES = {
    "window2d-zero-mult": ("window2d", 3, 25, 1, {"kernel_size": [3, 2, 4], "dilation": [1, 2, 1]}, "multiplicative"),
    "window2d-clamp-add": ("window2d", 2, 36, 1, {"kernel_size": [3, 2], "dilation": [1, 2], "border": "clamp"}, "additive"),
    "window2d-clamp-mult": ("window2d", 2, 36, 2, {"kernel_size": 3, "border": "clamp"}, "multiplicative"),
    "axial-both-add": ("axial", 2, 30, 1, {"axis": "both", "grid": [5, 6]}, "additive"),
    "longformer-dilated-mult": ("longformer", 3, 30, 1, {"window": 2, "dilation": [1, 2, 3]}, "multiplicative"),
}


def _triton_case(name, heads, n, prefix, options, mode) -> dict:
    triton_diag._BLOCK_M_OVERRIDE = 16  # several query and key blocks even on these short sequences
    pattern = make_pattern(name, num_heads=heads, num_prefix_tokens=prefix, **options)
    gen = torch.Generator().manual_seed(n)
    q, k, v, grad = (torch.randn(1, heads, prefix + n, 16, generator=gen) for _ in range(4))
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = fib_attention(*ref_in, pattern, mode=mode, backend="dense", scale=0.25)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fib_attention(*leaves, pattern, mode=mode, backend="triton", scale=0.25)
    grads = torch.autograd.grad(out, leaves, grad)
    return {name: ((a.double() - b).abs().max() / b.abs().max().clamp(min=1.0)).item()
            for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads))}


@pytest.mark.skipif(triton_diag.triton is None, reason="triton is not installed")
def test_triton_kernels_match_the_dense_reference_under_the_interpreter():
    # TRITON_INTERPRET=1 must be set before triton is imported: one subprocess runs every case.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads(lines[-1][len("RESULTS "):])
    for case in TRITON_CASES:
        assert "error" not in results[case], results[case].get("error")
        for name, err in results[case].items():
            assert err < 1e-5, f"{case} {name}: relative error {err:.3g}"


# --------------------------------------------------------------------------------- registry, models


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_registry_round_trip(name):
    options = {"fibottention": {"w_min": 3}, "window2d": {"kernel_size": [3, 5], "border": "clamp"},
               "longformer": {"dilation": [1, 2]}, "bigbird": {"num_random_keys": 2}}.get(name, {})
    pattern = make_pattern(name, num_heads=2, num_prefix_tokens=1, layer=3, **options)
    spec = pattern_spec(pattern)
    assert spec["name"] == name == pattern_name(pattern)
    rebuilt = make_pattern(**{k: v for k, v in json.loads(json.dumps(spec)).items()})
    assert rebuilt == pattern
    assert torch.equal(rebuilt.mask(36), pattern.mask(36))


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown attention pattern"):
        make_pattern("reformer", num_heads=2)
    with pytest.raises(ValueError, match=r"does not take \['kernel_size'\]"):
        make_pattern("longformer", num_heads=2, kernel_size=3)
    with pytest.raises(ValueError, match="3 heads"):
        make_pattern("longformer", num_heads=3, dilation=[1, 2])


def test_vit_pattern_option_reaches_every_block():
    model = timm.create_model(
        "vit_fib_tiny_patch16_224", img_size=32, patch_size=8, num_classes=4, depth=3,
        pattern="window2d", pattern_options={"kernel_size": 3, "border": "clamp"},
    )
    for index, block in enumerate(model.blocks):
        assert isinstance(block.attn, FibottentionAttention)
        assert block.attn.pattern == make_pattern("window2d", num_heads=3, layer=index, kernel_size=3, border="clamp")
        assert block.attn.mode == "additive"  # the baselines' default; Fibottention keeps multiplicative
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    fib = timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    assert isinstance(fib.blocks[0].attn.pattern, FibPattern) and fib.blocks[0].attn.mode == "multiplicative"


def test_vit_pattern_errors_name_the_option():
    with pytest.raises(ValueError, match="pattern must be one of"):
        timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, pattern="nope")
    with pytest.raises(ValueError, match=r"\['w_min'\] given with pattern='longformer'"):
        timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, pattern="longformer", w_min=2)
    with pytest.raises(ValueError, match="attention='dense'"):
        timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, attention="dense", pattern="longformer")


def test_bigbird_vit_redraws_its_random_keys_and_fixed_does_not():
    x = torch.randn(2, 3, 32, 32)
    outs = {}
    for name in ("bigbird", "bigbird_fixed"):
        torch.manual_seed(0)
        model = timm.create_model("vit_fib_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3,
                                  pattern=name).eval()
        with torch.no_grad():
            outs[name] = (model(x), model(x))
    assert not torch.allclose(*outs["bigbird"])
    assert torch.equal(*outs["bigbird_fixed"])


def test_video_vit_takes_the_pattern_for_its_spatial_attention():
    model = timm.create_model("vit_fib_video_tiny_patch16_224", img_size=32, patch_size=8, num_frames=2, depth=1,
                              num_classes=3, pattern="axial")
    assert model.blocks[0].attn.pattern.name == "axial"
    assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 3)


def _interpreted_main() -> None:
    torch.set_num_threads(1)
    results = {}
    for case, args in TRITON_CASES.items():
        try:
            results[case] = _triton_case(*args)
        except Exception:
            results[case] = {"error": traceback.format_exc()}
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    _interpreted_main()
