"""Triton backend: Fibottention as diagonal-walking GPU kernels, forward and backward, no T x T tensor.

Layout. Queries and keys are (B, h, T, d) with T = P prefix tokens + N patches. Patch query ``n`` of
head ``h`` attends to the P prefix keys and to the patch keys ``n + o`` for each signed offset ``o`` of
that head (``diagonal_plan`` in ``sparse.py``; both signs of every offset, 0 at most once, no
duplicates). The signed offsets reach the kernels as an int32 table (h, max_slots), zero-padded, plus
a per-head count; the table is built once per (pattern, N, device).

Forward (``_fwd_kernel``): one program per (batch * head, block of BLOCK_M patch queries). The Q tile
is loaded once; the kernel then walks the prefix keys (one K/V row each, broadcast over the tile) and
the head's diagonals. On a diagonal every query row meets exactly one key, so the "tile" is K/V rows
``n + o`` (masked where they leave the patch block) and the scores are row-wise dot products: the
work is O(T * k * d), bandwidth-bound, and tensor cores are of no use. Softmax is online, in float32.
The multiplicative mode (the release's ``softmax(S * M)``: masked keys keep logit 0) follows the
identity of the spec: with ``m = max(0, max allowed s)`` the row's numerator and denominator are

    sum_allowed (e^(s - m) - e^-m) * v + e^-m * sum_all v,    sum_allowed (e^(s - m) - e^-m) + e^-m * T,

so the loop accumulates ``e^(s - m) - e^-m`` per allowed key (rescaled like any online softmax when
``m`` grows, starting from ``m = 0``) and adds the ``e^-m`` terms once at the end, with ``sum_all v``
computed once per (b, h) by torch. The per-row log-sum-exp (float32) is saved for backward.

Backward, without atomics:
- ``_bwd_dq_kernel``, per query block, recomputes ``p = exp(s - lse)`` on the same keys, writes
  ``delta = rowsum(dO * O)`` for the next kernel, accumulates dQ and, for the P prefix keys (which
  every patch query touches), per-block partial sums of their dK and dV that torch then adds over
  blocks (a few (B, h, blocks, P, d) floats: deterministic, no atomics). In multiplicative mode it
  also writes per-block partial sums of ``c'_n * dO_n``, with ``c'_n = e^-lse_n`` the probability
  of one masked key of row n.
- ``_bwd_dkdv_kernel``, per block of patch keys ``j``, gathers the queries ``n = j - o`` that reach
  key ``j`` through each slot ``o``, recomputes their probabilities and accumulates dK and dV.
  In multiplicative mode every key's dV gets ``sum_n c'_n dO_n`` (masked keys are weighted c'_n) and
  an allowed key's weight is ``p - c'_n`` on top of it.

The other fixed patterns (``fibpolicy.attention.patterns``) add two optional inputs, switched on by
constexpr flags so that Fibottention's kernels are unchanged. A per-slot column shift with the grid
width (``HAS_COL``) keeps a key only where the anchor's column plus the shift stays on the grid. A
per-query anchor table (``HAS_ANCHOR``) gives each query its key as ``anchor + o`` (windows clamped
into the grid). For anchored patterns the dK/dV kernel cannot find a key's queries as ``j - o``, so it
reads them from an inverse (h, N, max in-degree) table built once per shape. Random keys (BigBird) are
not supported here; ``auto`` sends them to the ``gather`` backend on CUDA.

Prefix query rows see every key in both modes: they go through ``F.scaled_dot_product_attention``
(P dense rows), as in the ``sparse`` backend, and autograd adds their gradients.

Inputs may be float32, float16 or bfloat16; everything is accumulated in float32 and the result has
q's dtype. Head dims up to 256 are supported (padded to a power of two >= 16 and masked).
``triton_available`` is also True under ``TRITON_INTERPRET=1`` (set before triton is imported), which
runs the kernels on CPU tensors: how the tests check them without a GPU.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..pattern import FibPattern
from .sparse import anchor_table, column_table, diagonal_plan, inverse_query_table, offset_table

try:
    import triton
    import triton.language as tl
except ImportError:  # the other backends work without triton; this one then reports itself unavailable
    triton = None
    tl = None

__all__ = ["triton_available", "triton_fib_attention", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Tests set this to force several query/key blocks on tiny sequences (block-boundary masking, partial sums).
_BLOCK_M_OVERRIDE: int | None = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: torch.device | str) -> bool:
    """True when triton imports and ``device`` is CUDA, or when ``TRITON_INTERPRET=1`` (CPU interpreter)."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or _interpreting()


@lru_cache(maxsize=64)
def _slot_table(pattern: FibPattern, num_patches: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-head signed offsets (int32, zero-padded), per-head counts, and the table's width, on ``device``."""
    table, counts = offset_table(diagonal_plan(pattern, num_patches))
    return table.to(device), counts.to(device), table.shape[1]


@lru_cache(maxsize=64)
def _pattern_tables(pattern, num_patches: int, device: str) -> dict:
    """The optional tables of the other fixed patterns on ``device`` (dummies when a pattern lacks them).

    ``dcs``/``colw``: per-slot column shifts and grid width of the column mask; ``anch``: per-query
    anchors; ``invq``/``dmax``: for anchored patterns, the queries that reach each key (the dK/dV kernel
    cannot find them as a fixed shift).
    """
    plan = diagonal_plan(pattern, num_patches)
    dummy = torch.zeros(1, dtype=torch.int32, device=device)
    shifts, anchors = column_table(plan), anchor_table(plan)
    out = dict(dcs=dummy, colw=1, anch=dummy, invq=dummy, dmax=1, has_col=shifts is not None,
               has_anchor=anchors is not None)
    if shifts is not None:
        out.update(dcs=shifts.to(device), colw=int(plan.col_width))
    if anchors is not None:
        inverse = inverse_query_table(plan)
        out.update(anch=anchors.to(device), invq=inverse.contiguous().to(device), dmax=int(inverse.shape[-1]))
    return out


if triton is not None:

    @triton.jit
    def _fwd_kernel(
        Q, K, V, SUMV, OFFS, CNT, OUT, LSE, DCS, ANCH,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
        H, N, P, D, S, total_keys, scale, COLW,
        MULT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_COL: tl.constexpr, HAS_ANCHOR: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        col_ok = cols < D
        hh = h.to(tl.int64)
        q_base = Q + b * sqb + hh * sqh
        k_base = K + b * skb + hh * skh
        v_base = V + b * svb + hh * svh

        tile_ok = row_ok[:, None] & col_ok[None, :]
        q = tl.load(q_base + rows[:, None] * sqt + cols[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        # Same rounding as the dense reference, which scales q before the product.
        q = q * scale

        if MULT:
            # Masked keys have logit 0, so the running max never goes below 0.
            m_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        else:
            # Finite, so that exp(m_old - m_new) stays 0/1 and never NaN while a row has no key yet.
            m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        for j in range(0, P):
            kj = tl.load(k_base + j * skt + cols, mask=col_ok, other=0.0).to(tl.float32)
            vj = tl.load(v_base + j * svt + cols, mask=col_ok, other=0.0).to(tl.float32)
            s = tl.sum(q * kj[None, :], axis=1)
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp(m_i - m_new)
            w = tl.exp(s - m_new)
            if MULT:
                w = w - tl.exp(-m_new)
            l_i = l_i * alpha + w
            acc = acc * alpha[:, None] + w[:, None] * vj[None, :]
            m_i = m_new

        count = tl.load(CNT + h)
        if HAS_ANCHOR:
            base = tl.load(ANCH + hh * N + rows, mask=row_ok, other=0)
        else:
            base = rows
        for si in range(0, count):
            o = tl.load(OFFS + h * S + si)
            keys = base + o
            ok = row_ok & (keys >= 0) & (keys < N)
            if HAS_COL:
                c = base % COLW + tl.load(DCS + h * S + si)
                ok = ok & (c >= 0) & (c < COLW)
            kv_ok = ok[:, None] & col_ok[None, :]
            kt = tl.load(k_base + (P + keys)[:, None] * skt + cols[None, :], mask=kv_ok, other=0.0).to(tl.float32)
            vt = tl.load(v_base + (P + keys)[:, None] * svt + cols[None, :], mask=kv_ok, other=0.0).to(tl.float32)
            s = tl.where(ok, tl.sum(q * kt, axis=1), float("-inf"))
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp(m_i - m_new)
            w = tl.exp(s - m_new)
            if MULT:
                w = tl.where(ok, w - tl.exp(-m_new), 0.0)
            l_i = l_i * alpha + w
            acc = acc * alpha[:, None] + w[:, None] * vt
            m_i = m_new

        if MULT:
            masked_w = tl.exp(-m_i)
            sum_v = tl.load(SUMV + pid_bh.to(tl.int64) * D + cols, mask=col_ok, other=0.0)
            l_i = l_i + masked_w * total_keys
            acc = acc + masked_w[:, None] * sum_v[None, :]
        # Rows past N have no key (0 / 0); they are never stored, but keep them finite.
        l_i = tl.where(row_ok, l_i, 1.0)
        out = acc / l_i[:, None]
        o_base = OUT + b * sob + hh * soh
        tl.store(o_base + rows[:, None] * sot + cols[None, :], out.to(OUT.dtype.element_ty), mask=tile_ok)
        tl.store(LSE + pid_bh.to(tl.int64) * N + rows, m_i + tl.log(l_i), mask=row_ok)

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, OUT, DO, LSE, OFFS, CNT, DQ, DELTA, DKP, DVP, SDOC, DCS, ANCH,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sdb, sdh, sdt,
        H, N, P, D, S, scale, COLW,
        MULT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_COL: tl.constexpr, HAS_ANCHOR: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        num_m = tl.num_programs(0)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        col_ok = cols < D
        tile_ok = row_ok[:, None] & col_ok[None, :]
        hh = h.to(tl.int64)
        k_base = K + b * skb + hh * skh
        v_base = V + b * svb + hh * svh

        q = tl.load(Q + b * sqb + hh * sqh + rows[:, None] * sqt + cols[None, :], mask=tile_ok, other=0.0)
        q = q.to(tl.float32)
        qs = q * scale
        do = tl.load(DO + b * sdb + hh * sdh + rows[:, None] * sdt + cols[None, :], mask=tile_ok, other=0.0)
        do = do.to(tl.float32)
        out = tl.load(OUT + b * sob + hh * soh + rows[:, None] * sot + cols[None, :], mask=tile_ok, other=0.0)
        delta = tl.sum(do * out.to(tl.float32), axis=1)
        tl.store(DELTA + pid_bh.to(tl.int64) * N + rows, delta, mask=row_ok)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + rows, mask=row_ok, other=0.0)
        if MULT:
            masked_p = tl.where(row_ok, tl.exp(-lse), 0.0)

        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        part = (pid_bh.to(tl.int64) * num_m + pid_m) * P
        for j in range(0, P):
            kj = tl.load(k_base + j * skt + cols, mask=col_ok, other=0.0).to(tl.float32)
            vj = tl.load(v_base + j * svt + cols, mask=col_ok, other=0.0).to(tl.float32)
            p = tl.where(row_ok, tl.exp(tl.sum(qs * kj[None, :], axis=1) - lse), 0.0)
            ds = p * (tl.sum(do * vj[None, :], axis=1) - delta)
            dq += ds[:, None] * kj[None, :]
            # Every patch query touches every prefix key: per-block partial sums, added by torch.
            w = p
            if MULT:
                w = p - masked_p
            tl.store(DKP + (part + j) * D + cols, tl.sum(ds[:, None] * q, axis=0), mask=col_ok)
            tl.store(DVP + (part + j) * D + cols, tl.sum(w[:, None] * do, axis=0), mask=col_ok)

        count = tl.load(CNT + h)
        if HAS_ANCHOR:
            base = tl.load(ANCH + hh * N + rows, mask=row_ok, other=0)
        else:
            base = rows
        for si in range(0, count):
            o = tl.load(OFFS + h * S + si)
            keys = base + o
            ok = row_ok & (keys >= 0) & (keys < N)
            if HAS_COL:
                c = base % COLW + tl.load(DCS + h * S + si)
                ok = ok & (c >= 0) & (c < COLW)
            kv_ok = ok[:, None] & col_ok[None, :]
            kt = tl.load(k_base + (P + keys)[:, None] * skt + cols[None, :], mask=kv_ok, other=0.0).to(tl.float32)
            vt = tl.load(v_base + (P + keys)[:, None] * svt + cols[None, :], mask=kv_ok, other=0.0).to(tl.float32)
            p = tl.where(ok, tl.exp(tl.sum(qs * kt, axis=1) - lse), 0.0)
            ds = p * (tl.sum(do * vt, axis=1) - delta)
            dq += ds[:, None] * kt

        dq = dq * scale
        dq_off = pid_bh.to(tl.int64) * N * D + rows[:, None] * D + cols[None, :]
        tl.store(DQ + dq_off, dq.to(DQ.dtype.element_ty), mask=tile_ok)
        if MULT:
            sdoc = tl.sum(masked_p[:, None] * do, axis=0)
            tl.store(SDOC + (pid_bh.to(tl.int64) * num_m + pid_m) * D + cols, sdoc, mask=col_ok)

    @triton.jit
    def _dkdv_step(qrows, ok, q_base, do_base, row_stats, kt, vt, cols, col_ok, sqt, sdt, LSE, DELTA, scale, dk, dv,
                   MULT: tl.constexpr):
        """dK/dV of a key block from one query per key (``qrows``, where ``ok``)."""
        q_ok = ok[:, None] & col_ok[None, :]
        qn = tl.load(q_base + qrows[:, None] * sqt + cols[None, :], mask=q_ok, other=0.0).to(tl.float32)
        don = tl.load(do_base + qrows[:, None] * sdt + cols[None, :], mask=q_ok, other=0.0).to(tl.float32)
        lse = tl.load(LSE + row_stats + qrows, mask=ok, other=0.0)
        delta = tl.load(DELTA + row_stats + qrows, mask=ok, other=0.0)
        p = tl.where(ok, tl.exp(tl.sum((qn * scale) * kt, axis=1) - lse), 0.0)
        ds = p * (tl.sum(don * vt, axis=1) - delta)
        dk += ds[:, None] * qn
        w = p
        if MULT:
            w = tl.where(ok, p - tl.exp(-lse), 0.0)
        dv += w[:, None] * don
        return dk, dv

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, SDOC, OFFS, CNT, DK, DV, DCS, INVQ,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
        H, N, P, D, T, S, scale, COLW, DMAX,
        MULT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_COL: tl.constexpr, HAS_ANCHOR: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        keys = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        key_ok = keys < N
        col_ok = cols < D
        tile_ok = key_ok[:, None] & col_ok[None, :]
        hh = h.to(tl.int64)
        q_base = Q + b * sqb + hh * sqh
        do_base = DO + b * sdb + hh * sdh
        row_stats = pid_bh.to(tl.int64) * N

        kt = tl.load(K + b * skb + hh * skh + (P + keys)[:, None] * skt + cols[None, :], mask=tile_ok, other=0.0)
        kt = kt.to(tl.float32)
        vt = tl.load(V + b * svb + hh * svh + (P + keys)[:, None] * svt + cols[None, :], mask=tile_ok, other=0.0)
        vt = vt.to(tl.float32)
        dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        if HAS_ANCHOR:
            # Anchored windows: the queries that reach each key come from a table (-1 padded).
            for ci in range(0, DMAX):
                qrows = tl.load(INVQ + (hh * N + keys) * DMAX + ci, mask=key_ok, other=-1)
                ok = key_ok & (qrows >= 0)
                dk, dv = _dkdv_step(qrows, ok, q_base, do_base, row_stats, kt, vt, cols, col_ok, sqt, sdt, LSE,
                                    DELTA, scale, dk, dv, MULT)
        else:
            count = tl.load(CNT + h)
            for si in range(0, count):
                o = tl.load(OFFS + h * S + si)
                # Key j is met by query n through slot o when j = n + o.
                qrows = keys - o
                ok = key_ok & (qrows >= 0) & (qrows < N)
                if HAS_COL:
                    c = qrows % COLW + tl.load(DCS + h * S + si)
                    ok = ok & (c >= 0) & (c < COLW)
                dk, dv = _dkdv_step(qrows, ok, q_base, do_base, row_stats, kt, vt, cols, col_ok, sqt, sdt, LSE,
                                    DELTA, scale, dk, dv, MULT)

        dk = dk * scale
        if MULT:
            dv += tl.load(SDOC + pid_bh.to(tl.int64) * D + cols, mask=col_ok, other=0.0)[None, :]
        out_off = pid_bh.to(tl.int64) * T * D + (P + keys)[:, None] * D + cols[None, :]
        tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=tile_ok)
        tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=tile_ok)


def _blocks(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_D, forward BLOCK_M, backward BLOCK_M) for a head dim."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if _BLOCK_M_OVERRIDE is not None:
        return block_d, _BLOCK_M_OVERRIDE, _BLOCK_M_OVERRIDE
    # Tiles are plain float32 registers (no tensor cores on diagonals): keep a few of them per program
    # within the register file; backward holds more tiles at once. Not yet tuned on a GPU.
    return block_d, max(16, min(128, 4096 // block_d)), max(16, min(64, 2048 // block_d))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _TritonDiagonalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_patch, k, v, pattern: FibPattern, multiplicative: bool, scale: float):  # noqa: D102
        bsz, heads, n, d = q_patch.shape
        p, t = pattern.num_prefix_tokens, k.shape[-2]
        offs, counts, width = _slot_table(pattern, n, str(q_patch.device))
        tabs = _pattern_tables(pattern, n, str(q_patch.device))
        block_d, block_m, _ = _blocks(d)
        out = torch.empty(bsz, heads, n, d, dtype=q_patch.dtype, device=q_patch.device)
        lse = torch.empty(bsz * heads, n, dtype=torch.float32, device=q_patch.device)
        sum_v = v.sum(dim=-2, dtype=torch.float32).reshape(bsz * heads, d) if multiplicative else lse
        grid = (triton.cdiv(n, block_m), bsz * heads)
        _fwd_kernel[grid](
            q_patch, k, v, sum_v, offs, counts, out, lse, tabs["dcs"], tabs["anch"],
            *_strides(q_patch), *_strides(k), *_strides(v), *_strides(out),
            heads, n, p, d, width, float(t), float(scale), tabs["colw"],
            MULT=multiplicative, BLOCK_M=block_m, BLOCK_D=block_d,
            HAS_COL=tabs["has_col"], HAS_ANCHOR=tabs["has_anchor"], num_warps=4,
        )
        ctx.save_for_backward(q_patch, k, v, out, lse)
        ctx.pattern, ctx.multiplicative, ctx.scale = pattern, multiplicative, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        q_patch, k, v, out, lse = ctx.saved_tensors
        multiplicative, scale = ctx.multiplicative, ctx.scale
        bsz, heads, n, d = q_patch.shape
        p, t = ctx.pattern.num_prefix_tokens, k.shape[-2]
        dev = q_patch.device
        offs, counts, width = _slot_table(ctx.pattern, n, str(dev))
        tabs = _pattern_tables(ctx.pattern, n, str(dev))
        block_d, _, block_m = _blocks(d)
        num_m = triton.cdiv(n, block_m)
        grad_out = _last_dim_contiguous(grad_out)

        grad_q = torch.empty(bsz, heads, n, d, dtype=q_patch.dtype, device=dev)
        grad_k = torch.empty(bsz, heads, t, d, dtype=k.dtype, device=dev)
        grad_v = torch.empty(bsz, heads, t, d, dtype=v.dtype, device=dev)
        delta = torch.empty(bsz * heads, n, dtype=torch.float32, device=dev)
        # max(p, 1) / the (1,) fallback: never hand a kernel a pointer into an empty tensor.
        dk_prefix = torch.empty(bsz * heads, num_m, max(p, 1), d, dtype=torch.float32, device=dev)
        dv_prefix = torch.empty_like(dk_prefix)
        sdoc = torch.empty(bsz * heads, num_m if multiplicative else 1, d, dtype=torch.float32, device=dev)

        grid = (num_m, bsz * heads)
        _bwd_dq_kernel[grid](
            q_patch, k, v, out, grad_out, lse, offs, counts, grad_q, delta, dk_prefix, dv_prefix, sdoc,
            tabs["dcs"], tabs["anch"],
            *_strides(q_patch), *_strides(k), *_strides(v), *_strides(out), *_strides(grad_out),
            heads, n, p, d, width, float(scale), tabs["colw"],
            MULT=multiplicative, BLOCK_M=block_m, BLOCK_D=block_d,
            HAS_COL=tabs["has_col"], HAS_ANCHOR=tabs["has_anchor"], num_warps=4,
        )
        if multiplicative:
            sdoc = sdoc.sum(dim=1)  # (B*h, d): sum over patch rows of c'_n dO_n, shared by every key's dV
        _bwd_dkdv_kernel[grid](
            q_patch, k, v, grad_out, lse, delta, sdoc, offs, counts, grad_k, grad_v, tabs["dcs"], tabs["invq"],
            *_strides(q_patch), *_strides(k), *_strides(v), *_strides(grad_out),
            heads, n, p, d, t, width, float(scale), tabs["colw"], tabs["dmax"],
            MULT=multiplicative, BLOCK_M=block_m, BLOCK_D=block_d,
            HAS_COL=tabs["has_col"], HAS_ANCHOR=tabs["has_anchor"], num_warps=4,
        )
        if p:
            dk_p = dk_prefix.sum(dim=1).mul_(scale)
            dv_p = dv_prefix.sum(dim=1)
            if multiplicative:
                dv_p += sdoc.unsqueeze(1)
            grad_k[:, :, :p] = dk_p.view(bsz, heads, p, d)
            grad_v[:, :, :p] = dv_p.view(bsz, heads, p, d)
        return grad_q, grad_k, grad_v, None, None, None


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: FibPattern, mode: str, dropout_p: float
) -> None:
    if dropout_p > 0.0:
        raise ValueError("the 'triton' backend does not implement attention dropout; use backend='dense'")
    if mode not in ("multiplicative", "additive"):
        raise ValueError(f"mode must be 'multiplicative' or 'additive', got {mode!r}")
    if q.dim() != 4 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(
            f"q, k, v must share one (B, h, T, d) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] != pattern.num_heads:
        raise ValueError(f"q has {q.shape[1]} heads but the pattern was built for {pattern.num_heads}")
    if getattr(pattern, "random_keys_per_query", 0):
        raise ValueError("the 'triton' backend runs fixed patterns only; random keys (BigBird) need 'gather' on CUDA")
    if q.shape[-2] <= pattern.num_prefix_tokens:
        raise ValueError(
            f"sequence of {q.shape[-2]} tokens has no patch token after {pattern.num_prefix_tokens} prefix tokens"
        )
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"the 'triton' backend supports head dims 1..{MAX_HEAD_DIM}, got head dim {head_dim}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"the 'triton' backend needs q, k, v of one dtype among float32/float16/bfloat16, "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not triton_available(q.device):
        why = "triton is not installed" if triton is None else f"tensors are on {q.device}, not CUDA"
        raise RuntimeError(f"the 'triton' backend is unavailable: {why} (set TRITON_INTERPRET=1 to run it on CPU)")


def triton_fib_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: FibPattern,
    *,
    mode: str,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fibottention on (B, h, T, d) CUDA tensors with Triton kernels: diagonals for patch queries, dense prefix rows."""
    _check_inputs(q, k, v, pattern, mode, dropout_p)
    p = pattern.num_prefix_tokens
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    patch_out = _TritonDiagonalAttention.apply(q[:, :, p:], k, v, pattern, mode == "multiplicative", scale)
    if not p:
        return patch_out
    # Prefix queries see every key in both modes: a few dense rows.
    prefix_out = F.scaled_dot_product_attention(q[:, :, :p], k, v, scale=scale)
    return torch.cat([prefix_out, patch_out], dim=-2)
