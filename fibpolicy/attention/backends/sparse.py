"""Truly sparse backend: walks the pattern diagonal by diagonal and never builds a T x T tensor.

Each offset ``o`` of a head is a pair of diagonals of the patch block: query ``n`` meets key
``n + o`` and key ``n - o``. On a diagonal the scores are row-wise dot products of a slice of Q
with a shifted slice of K (views, no gather), so work and memory are O(T * k * d) with k the number
of diagonals (about 2 % of T at ViT-B sizes) plus the prefix keys.

The multiplicative mode (the release's ``softmax(S * M)``) is computed sparsely as well: every
masked key has logit 0, so with ``m = max(0, max_allowed s)``, ``c = exp(-m)`` and
``sum_v = sum over all keys of v``::

    out = [c * sum_v + sum_allowed (exp(s - m) - c) * v] / [sum_allowed exp(s - m) + c * (T - |allowed|)]

Forward and backward are written by hand so that autograd does not keep one shifted copy of K and V
per diagonal; backward recomputes the row-wise products instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..pattern import FibPattern


@dataclass(frozen=True, eq=False)
class DiagonalPlan:
    """Where each head's diagonals run: per head a tuple of (signed offset, first query, end query).

    Fibottention's plans use only the first four fields. The other fixed patterns
    (``fibpolicy.attention.patterns``) may add, per slot, a column shift checked against a grid width
    (``col_width`` > 0: key column = anchor column + shift must stay in [0, W), so 2-D offsets do not
    wrap across rows), and a per-query anchor (key = anchor[h, n] + offset instead of n + offset, for
    windows clamped into the grid). ``keys`` then holds the resulting (h, N, slots) key table (-1 where
    a slot has no key for that query).
    """

    num_prefix: int
    num_patches: int
    slots: tuple[tuple[tuple[int, int, int], ...], ...]
    n_allowed: torch.Tensor  # (h, N) float: allowed keys per patch query, prefix keys included
    col_width: int = 0
    col_shifts: tuple[tuple[int, ...], ...] | None = None  # per head, per slot: column shift
    anchors: torch.Tensor | None = None  # (h, N) int64 anchor of each patch query, None = the query itself
    keys: torch.Tensor | None = None  # (h, N, max_slots) int64 key of each (query, slot), -1 = none

    @property
    def max_slots(self) -> int:
        """Largest number of diagonals of any head."""
        return max((len(s) for s in self.slots), default=0)

    def allowed_pairs(self) -> int:
        """Number of allowed (patch query, key) pairs summed over heads."""
        return int(self.n_allowed.sum().item())


def diagonal_plan(pattern, num_patches: int) -> DiagonalPlan:
    """Diagonal layout of ``pattern`` for ``num_patches`` patch tokens (cached).

    Fibottention's ``FibPattern`` is laid out here; the other patterns build their own plan
    (``pattern.plan``), which may add column masks and anchors.
    """
    if hasattr(pattern, "plan"):
        return pattern.plan(num_patches)
    return _fib_plan(pattern, num_patches)


@lru_cache(maxsize=64)
def _fib_plan(pattern: FibPattern, num_patches: int) -> DiagonalPlan:
    n, p = num_patches, pattern.num_prefix_tokens
    slots = []
    n_allowed = torch.full((pattern.num_heads, n), float(p))
    for h, offsets in enumerate(pattern.distinct_offsets(n)):
        head_slots = []
        for o in offsets:
            for signed in ((o,) if o == 0 else (o, -o)):
                lo, hi = max(0, -signed), min(n, n - signed)
                head_slots.append((signed, lo, hi))
                n_allowed[h, lo:hi] += 1
        slots.append(tuple(head_slots))
    return DiagonalPlan(p, n, tuple(slots), n_allowed)


@lru_cache(maxsize=64)
def offset_table(plan: DiagonalPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's signed offsets as an int32 (h, max_slots) table, zero-padded, and the per-head counts.

    What the compiled kernels take instead of Python tuples; at least one column, so that a kernel
    never gets a pointer into an empty tensor.
    """
    table = torch.zeros(len(plan.slots), max(1, plan.max_slots), dtype=torch.int32)
    for h, head_slots in enumerate(plan.slots):
        table[h, : len(head_slots)] = torch.tensor([o for o, _, _ in head_slots], dtype=torch.int32)
    return table, torch.tensor([len(s) for s in plan.slots], dtype=torch.int32)


def has_extras(plan: DiagonalPlan) -> bool:
    """True when the plan has a column mask or per-query anchors (not a plain Fibottention plan)."""
    return plan.keys is not None


@lru_cache(maxsize=64)
def column_table(plan: DiagonalPlan) -> torch.Tensor | None:
    """Per-head column shifts as an int32 (h, max_slots) table like ``offset_table``'s, or None."""
    if not plan.col_width or plan.col_shifts is None:
        return None
    table = torch.zeros(len(plan.slots), max(1, plan.max_slots), dtype=torch.int32)
    for h, shifts in enumerate(plan.col_shifts):
        table[h, : len(shifts)] = torch.tensor(shifts, dtype=torch.int32)
    return table


@lru_cache(maxsize=64)
def anchor_table(plan: DiagonalPlan) -> torch.Tensor | None:
    """Per-query anchors as a contiguous int32 (h, N) table, or None when every query is its own anchor."""
    return None if plan.anchors is None else plan.anchors.to(torch.int32).contiguous()


@lru_cache(maxsize=64)
def key_table(plan: DiagonalPlan) -> torch.Tensor:
    """(h, N, max_slots) int64 patch key of each (query, slot); -1 where the slot has none."""
    if plan.keys is not None:
        return plan.keys
    n = plan.num_patches
    keys = torch.full((len(plan.slots), n, max(1, plan.max_slots)), -1, dtype=torch.int64)
    for h, head_slots in enumerate(plan.slots):
        for j, (o, lo, hi) in enumerate(head_slots):
            keys[h, lo:hi, j] = torch.arange(lo + o, hi + o)
    return keys


@lru_cache(maxsize=64)
def inverse_query_table(plan: DiagonalPlan) -> torch.Tensor:
    """(h, N, max in-degree) int32: the queries whose slots reach each patch key, -1 padded.

    What a key-centred backward pass needs when keys are not a fixed shift of their queries (anchors).
    """
    keys = key_table(plan)
    heads, n, slots = keys.shape
    per_head = []
    for h in range(heads):
        flat = keys[h].reshape(-1)
        queries = torch.arange(n).repeat_interleave(slots)
        ok = flat >= 0
        flat, queries = flat[ok], queries[ok]
        order = torch.argsort(flat * n + queries)  # by key, then query: a deterministic layout
        flat, queries = flat[order], queries[order]
        counts = torch.bincount(flat, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        per_head.append((flat, queries, torch.arange(len(flat)) - starts[flat], int(counts.max()) if len(flat) else 0))
    width = max(1, max(w for *_, w in per_head))
    table = torch.full((heads, n, width), -1, dtype=torch.int32)
    for h, (flat, queries, rank, _) in enumerate(per_head):
        table[h, flat, rank] = queries.to(torch.int32)
    return table


@lru_cache(maxsize=64)
def _n_allowed_on(plan: DiagonalPlan, device: str) -> torch.Tensor:
    return plan.n_allowed.to(device)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Softmax statistics and accumulators in at least float32, also under bf16 autocast.
    return torch.promote_types(dtype, torch.float32)


class _DiagonalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: DiagonalPlan, multiplicative: bool, scale: float):  # noqa: D102
        bsz, heads, n, d = q.shape
        p, t = plan.num_prefix, k.shape[-2]
        acc = _work_dtype(q.dtype)
        k_patch, v_patch = k[:, :, p:], v[:, :, p:]

        scores = q.new_full((bsz, heads, n, p + plan.max_slots), float("-inf"), dtype=acc)
        if p:
            scores[..., :p] = torch.matmul(q, k[:, :, :p].transpose(-2, -1))
        for h, head_slots in enumerate(plan.slots):
            qh, kh, sh = q[:, h], k_patch[:, h], scores[:, h]
            for j, (o, lo, hi) in enumerate(head_slots):
                sh[:, lo:hi, p + j] = torch.linalg.vecdot(qh[:, lo:hi], kh[:, lo + o : hi + o])
        scores.mul_(scale)

        row_max = scores.amax(dim=-1)
        if multiplicative:
            row_max.clamp_(min=0.0)
        weights = torch.exp(scores.sub_(row_max.unsqueeze(-1)))  # 0 on unused slots (-inf)
        del scores
        denom = weights.sum(dim=-1)
        if multiplicative:
            masked_weight = torch.exp(-row_max)  # weight e^(0 - m) of every masked key
            denom.addcmul_(masked_weight, t - _n_allowed_on(plan, str(q.device)))
            num = masked_weight.unsqueeze(-1) * v.sum(dim=-2, keepdim=True, dtype=acc)
            # Allowed keys replace their masked-key share: (e^(s-m) - c) v.
            value_w = weights - masked_weight.unsqueeze(-1)
        else:
            masked_weight = None
            num = torch.zeros(bsz, heads, n, d, dtype=acc, device=q.device)
            value_w = weights
        if p:
            num.add_(torch.matmul(value_w[..., :p].to(v.dtype), v[:, :, :p]))
        for h, head_slots in enumerate(plan.slots):
            vh, nh, wh = v_patch[:, h], num[:, h], value_w[:, h]
            for j, (o, lo, hi) in enumerate(head_slots):
                nh[:, lo:hi].addcmul_(wh[:, lo:hi, p + j, None], vh[:, lo + o : hi + o])
        del value_w
        inv_denom = denom.reciprocal_()
        out = num.mul_(inv_denom.unsqueeze(-1))
        probs = weights.mul_(inv_denom.unsqueeze(-1))
        masked_prob = masked_weight.mul_(inv_denom) if multiplicative else None
        ctx.save_for_backward(q, k, v, out, probs, masked_prob)
        ctx.plan, ctx.multiplicative, ctx.scale = plan, multiplicative, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, out, probs, masked_prob = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        p = plan.num_prefix
        acc = out.dtype
        grad_out = grad_out.to(acc).contiguous()
        delta = (grad_out * out).sum(dim=-1)  # (B, h, N)

        grad_q = torch.zeros_like(q, dtype=acc)
        grad_k = torch.zeros_like(k, dtype=acc)
        grad_v = torch.zeros_like(v, dtype=acc)
        # d score = p * (dO.v - delta) * scale; the value weight of an allowed key is p - masked share.
        probs_scaled = probs * scale
        value_w = probs - masked_prob.unsqueeze(-1) if ctx.multiplicative else probs
        if ctx.multiplicative:
            grad_v.add_((masked_prob.unsqueeze(-1) * grad_out).sum(dim=-2, keepdim=True))
        if p:
            kp, vp = k[:, :, :p].to(acc), v[:, :, :p].to(acc)
            grad_s = torch.matmul(grad_out, vp.transpose(-2, -1)).sub_(delta.unsqueeze(-1))
            grad_s.mul_(probs_scaled[..., :p])
            grad_q.add_(torch.matmul(grad_s, kp))
            grad_k[:, :, :p] += torch.matmul(grad_s.transpose(-2, -1), q.to(acc))
            grad_v[:, :, :p] += torch.matmul(value_w[..., :p].transpose(-2, -1), grad_out)

        k_patch, v_patch = k[:, :, p:], v[:, :, p:]
        gk_patch, gv_patch = grad_k[:, :, p:], grad_v[:, :, p:]
        for h, head_slots in enumerate(plan.slots):
            qh, kh, vh, doh, dh = q[:, h], k_patch[:, h], v_patch[:, h], grad_out[:, h], delta[:, h]
            gqh, gkh, gvh = grad_q[:, h], gk_patch[:, h], gv_patch[:, h]
            ph, wh = probs_scaled[:, h], value_w[:, h]
            for j, (o, lo, hi) in enumerate(head_slots):
                k_sl, v_sl = kh[:, lo + o : hi + o], vh[:, lo + o : hi + o]
                grad_s = torch.linalg.vecdot(doh[:, lo:hi], v_sl.to(acc)).sub_(dh[:, lo:hi])
                grad_s.mul_(ph[:, lo:hi, p + j]).unsqueeze_(-1)
                gqh[:, lo:hi].addcmul_(grad_s, k_sl)
                gkh[:, lo + o : hi + o].addcmul_(grad_s, qh[:, lo:hi])
                gvh[:, lo + o : hi + o].addcmul_(wh[:, lo:hi, p + j, None], doh[:, lo:hi])
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None


def all_keys(plan: DiagonalPlan, random_keys: torch.Tensor | None) -> torch.Tensor:
    """(B or 1, h, N, slots [+ r]) int64 patch keys of every (query, slot): the static table, then the
    random keys when given; -1 where there is none."""
    static = key_table(plan).unsqueeze(0)
    if random_keys is None:
        return static
    random_keys = random_keys.to(torch.int64).cpu()
    return torch.cat([static.expand(random_keys.shape[0], *static.shape[1:]), random_keys], dim=-1)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, N) of ``x`` (B, M, d) -> (B, N, d)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


class _SlotAttention(torch.autograd.Function):
    """The general sparse path: per slot, one gathered row of K and V per query (column-masked or
    anchored patterns, random keys). Same arithmetic and memory as the diagonal path (O(T * k * d))."""

    @staticmethod
    def forward(ctx, q, k, v, keys, multiplicative: bool, scale: float, num_prefix: int):  # noqa: D102
        bsz, heads, n, d = q.shape
        p, t = num_prefix, k.shape[-2]
        acc = _work_dtype(q.dtype)
        keys = keys.to(q.device).expand(bsz, *keys.shape[1:])
        valid = keys >= 0
        idx = keys.clamp(min=0)
        k_patch, v_patch = k[:, :, p:], v[:, :, p:]
        slots = keys.shape[-1]
        scores = q.new_full((bsz, heads, n, p + slots), float("-inf"), dtype=acc)
        if p:
            scores[..., :p] = torch.matmul(q, k[:, :, :p].transpose(-2, -1))
        for h in range(heads):
            for j in range(slots):
                s = torch.linalg.vecdot(q[:, h], _gather_rows(k_patch[:, h], idx[:, h, :, j]))
                scores[:, h, :, p + j] = s.masked_fill(~valid[:, h, :, j], float("-inf"))
        scores.mul_(scale)
        row_max = scores.amax(dim=-1)
        if multiplicative:
            row_max.clamp_(min=0.0)
        weights = torch.exp(scores.sub_(row_max.unsqueeze(-1)))
        del scores
        denom = weights.sum(dim=-1)
        if multiplicative:
            masked_weight = torch.exp(-row_max)
            n_allowed = valid.sum(dim=-1).to(acc) + p
            denom.addcmul_(masked_weight, t - n_allowed)
            num = masked_weight.unsqueeze(-1) * v.sum(dim=-2, keepdim=True, dtype=acc)
            value_w = weights - masked_weight.unsqueeze(-1)
            value_w[..., p:].masked_fill_(~valid, 0.0)
        else:
            masked_weight = None
            num = torch.zeros(bsz, heads, n, d, dtype=acc, device=q.device)
            value_w = weights
        if p:
            num.add_(torch.matmul(value_w[..., :p].to(v.dtype), v[:, :, :p]))
        for h in range(heads):
            for j in range(slots):
                num[:, h].addcmul_(value_w[:, h, :, p + j, None], _gather_rows(v_patch[:, h], idx[:, h, :, j]))
        del value_w
        inv_denom = denom.reciprocal_()
        out = num.mul_(inv_denom.unsqueeze(-1))
        probs = weights.mul_(inv_denom.unsqueeze(-1))
        masked_prob = masked_weight.mul_(inv_denom) if multiplicative else None
        ctx.save_for_backward(q, k, v, out, probs, masked_prob, keys)
        ctx.multiplicative, ctx.scale, ctx.num_prefix = multiplicative, scale, p
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, out, probs, masked_prob, keys = ctx.saved_tensors
        scale, p = ctx.scale, ctx.num_prefix
        acc = out.dtype
        heads, slots = keys.shape[1], keys.shape[-1]
        valid = keys >= 0
        idx = keys.clamp(min=0)
        grad_out = grad_out.to(acc).contiguous()
        delta = (grad_out * out).sum(dim=-1)
        grad_q = torch.zeros_like(q, dtype=acc)
        grad_k = torch.zeros_like(k, dtype=acc)
        grad_v = torch.zeros_like(v, dtype=acc)
        probs_scaled = probs * scale
        if ctx.multiplicative:
            value_w = probs - masked_prob.unsqueeze(-1)
            value_w[..., p:].masked_fill_(~valid, 0.0)
            grad_v.add_((masked_prob.unsqueeze(-1) * grad_out).sum(dim=-2, keepdim=True))
        else:
            value_w = probs
        if p:
            kp, vp = k[:, :, :p].to(acc), v[:, :, :p].to(acc)
            grad_s = torch.matmul(grad_out, vp.transpose(-2, -1)).sub_(delta.unsqueeze(-1))
            grad_s.mul_(probs_scaled[..., :p])
            grad_q.add_(torch.matmul(grad_s, kp))
            grad_k[:, :, :p] += torch.matmul(grad_s.transpose(-2, -1), q.to(acc))
            grad_v[:, :, :p] += torch.matmul(value_w[..., :p].transpose(-2, -1), grad_out)
        k_patch, v_patch = k[:, :, p:], v[:, :, p:]
        gk_patch, gv_patch = grad_k[:, :, p:], grad_v[:, :, p:]
        for h in range(heads):
            qh, doh, dh = q[:, h].to(acc), grad_out[:, h], delta[:, h]
            for j in range(slots):
                ij = idx[:, h, :, j]
                k_sl, v_sl = _gather_rows(k_patch[:, h], ij).to(acc), _gather_rows(v_patch[:, h], ij).to(acc)
                # Probabilities of missing slots are 0, so they add nothing (to row 0) below.
                grad_s = torch.linalg.vecdot(doh, v_sl).sub_(dh).mul_(probs_scaled[:, h, :, p + j]).unsqueeze_(-1)
                grad_q[:, h].addcmul_(grad_s, k_sl)
                rows = ij.unsqueeze(-1).expand(*ij.shape, q.shape[-1])
                gk_patch[:, h].scatter_add_(1, rows, grad_s * qh)
                gv_patch[:, h].scatter_add_(1, rows, value_w[:, h, :, p + j, None] * doh)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None, None


def sparse_fib_attention(
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
    """Fibottention on (B, h, T, d) tensors in O(T * k * d): diagonals for patch queries, dense prefix rows.

    Plans with a column mask or anchors, and ``random_keys`` (B, h, N, r), take the general slot path.
    """
    if dropout_p > 0.0:
        raise ValueError("the 'sparse' backend does not implement attention dropout; use backend='dense'")
    p = pattern.num_prefix_tokens
    plan = diagonal_plan(pattern, q.shape[-2] - p)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if plan.keys is None and random_keys is None:
        patch_out = _DiagonalAttention.apply(q[:, :, p:], k, v, plan, mode == "multiplicative", scale)
    else:
        keys = all_keys(plan, random_keys)
        patch_out = _SlotAttention.apply(q[:, :, p:], k, v, keys, mode == "multiplicative", scale, p)
    if not p:
        return patch_out
    # Prefix queries see every key in both modes: a few dense rows.
    prefix_out = F.scaled_dot_product_attention(q[:, :, :p], k, v, scale=scale)
    return torch.cat([prefix_out, patch_out], dim=-2)
