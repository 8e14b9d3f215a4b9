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


@dataclass(frozen=True)
class DiagonalPlan:
    """Where each head's diagonals run: per head a tuple of (signed offset, first query, end query)."""

    num_prefix: int
    num_patches: int
    slots: tuple[tuple[tuple[int, int, int], ...], ...]
    n_allowed: torch.Tensor  # (h, N) float: allowed keys per patch query, prefix keys included

    @property
    def max_slots(self) -> int:
        """Largest number of diagonals of any head."""
        return max((len(s) for s in self.slots), default=0)

    def allowed_pairs(self) -> int:
        """Number of allowed (patch query, key) pairs summed over heads."""
        return int(self.n_allowed.sum().item())


@lru_cache(maxsize=64)
def diagonal_plan(pattern: FibPattern, num_patches: int) -> DiagonalPlan:
    """Diagonal layout of ``pattern`` for ``num_patches`` patch tokens (cached)."""
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


def sparse_fib_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: FibPattern,
    *,
    mode: str,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fibottention on (B, h, T, d) tensors in O(T * k * d): diagonals for patch queries, dense prefix rows."""
    if dropout_p > 0.0:
        raise ValueError("the 'sparse' backend does not implement attention dropout; use backend='dense'")
    p = pattern.num_prefix_tokens
    plan = diagonal_plan(pattern, q.shape[-2] - p)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    patch_out = _DiagonalAttention.apply(q[:, :, p:], k, v, plan, mode == "multiplicative", scale)
    if not p:
        return patch_out
    # Prefix queries see every key in both modes: a few dense rows.
    prefix_out = F.scaled_dot_product_attention(q[:, :, :p], k, v, scale=scale)
    return torch.cat([prefix_out, patch_out], dim=-2)
