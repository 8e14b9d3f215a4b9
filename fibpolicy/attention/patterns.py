"""The fixed sparse-attention patterns Fibottention is compared with, on Fibottention's backends.

Every pattern here is, per head, a set of key *slots* for each patch query ``n`` of an ``N``-patch
sequence (raster order on an ``H x W`` grid): key = anchor(n) + delta, kept when it lies in
``[0, N)`` and, for 2-D patterns, when its column anchor_col + column_shift stays in ``[0, W)`` (no
wrap across row ends). The anchor is the query itself except for windows clamped into the grid.
Prefix tokens (CLS, registers) are global exactly as in Fibottention: prefix queries see every key,
every query sees the prefix keys. So the same ``cpu``, ``sparse`` and ``triton`` backends run them
(``shared/specs/fcvit_and_sparse_patterns.md`` section 4). BigBird's random keys are not diagonals:
they are drawn per call as an index table and go through the gather-capable backends.

Patterns (``PATTERNS``; ``make_pattern(name, num_heads=..., ...)``):

- ``fibottention``: :class:`~fibpolicy.attention.pattern.FibPattern`, unchanged.
- ``longformer``: sliding window ``{k*d : |k| <= window}`` on the 1-D raster order, per-head
  dilation ``d`` optional (the authors' benchmark: window 1, dilation 1, CLS global).
- ``bigbird``: band ``|i - j| <= window`` plus ``num_random`` random patch keys per (batch, head,
  query), redrawn every call, never a kept key, never the query itself, never CLS (the authors'
  benchmark: window 1, one random key). ``bigbird_fixed``: the same with the random keys drawn once
  per (layer, N) from ``seed`` and shared by the batch.
- ``strided``: Sparse Transformer strided, ``(i - j) mod stride == 0`` plus an optional local band.
- ``window2d``: 2-D neighbourhood windows on the patch grid, ``kernel_size`` and ``dilation`` per head;
  ``border="zero"`` (SASA-style, zero-padded: diagonals ``d*(i*W + j)`` plus a column mask) or
  ``"clamp"`` (NATTEN's neighbourhood attention: the window slides inward at borders, so every query
  has ``k^2`` keys; per-query anchors).
- ``axial``: same row and/or same column on the grid (``axis`` = row, column, both or alternate per head).

Masks are pure and cached per shape; ``density(pattern, grid)`` gives the patch-block density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, ClassVar

import torch

from .backends.sparse import DiagonalPlan, diagonal_plan, key_table
from .pattern import FibPattern, _check_int

__all__ = [
    "PATTERNS",
    "AxialPattern",
    "BigBirdPattern",
    "LongformerPattern",
    "SparsePattern",
    "StridedPattern",
    "Window2DPattern",
    "density",
    "grid_for",
    "make_pattern",
    "match_density",
    "pattern_name",
    "pattern_spec",
]


def _per_head(name: str, value: int | tuple[int, ...] | list[int], num_heads: int, minimum: int) -> tuple[int, ...]:
    """An int for every head, or one per head."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_heads:
            raise ValueError(f"{name} has {len(value)} entries but there are {num_heads} heads")
        return tuple(_check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))
    return (_check_int(name, value, minimum),) * num_heads


def grid_for(num_patches: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) patch grid of ``num_patches`` patches: ``grid`` if given (checked), else the square."""
    if grid is not None:
        h, w = (int(g) for g in grid)
        if h * w != num_patches:
            raise ValueError(f"grid {h}x{w} has {h * w} patches but the sequence has {num_patches}")
        return h, w
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"a 2-D pattern needs the patch grid: {num_patches} patches is not a square; pass grid=(H, W)"
        )
    return side, side


def _as_grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    h, w = grid
    return int(h), int(w)


@dataclass(frozen=True)
class SparsePattern:
    """A fixed per-head pattern of patch keys plus global prefix tokens (base class of the zoo).

    Subclasses define ``stencils(num_patches)``: per head, the distinct (delta, column shift) slots,
    and optionally ``anchors(num_patches)`` and a column mask (``column_masked``).
    """

    num_heads: int
    num_prefix_tokens: int = 1
    layer: int | None = 0

    name: ClassVar[str] = "sparse"
    default_mode: ClassVar[str] = "additive"  # the authors' baselines added -1e9 outside the mask
    column_masked: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_int("num_heads", self.num_heads, 1)
        _check_int("num_prefix_tokens", self.num_prefix_tokens, 0)
        if self.layer is not None:
            _check_int("layer", self.layer, 0)

    # ---- what a pattern defines
    def stencils(self, num_patches: int) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per head, the distinct (delta, column shift) slots."""
        raise NotImplementedError

    def anchors(self, num_patches: int) -> torch.Tensor | None:
        """(h, N) int64 anchor of each patch query, or None (every query anchors itself)."""
        return None

    def grid_width(self, num_patches: int) -> int:
        """Width W of the grid the column mask checks against (0: no column mask)."""
        return 0

    @property
    def num_random(self) -> int:
        """Random patch keys per query (0: the pattern is fully static)."""
        return 0

    @property
    def random_keys_per_query(self) -> int:
        """Keys drawn per (batch, head, query) by :meth:`sample_random_keys` (0 for static patterns)."""
        return self.num_random

    # ---- derived, cached
    def plan(self, num_patches: int) -> DiagonalPlan:
        """The static part as a diagonal plan (cached per N)."""
        return _plan_for(self, num_patches)

    def mask(self, num_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean (h, T, T) mask of the static part (random keys excluded), cached; treat as read-only."""
        return _mask_for(self, num_patches, str(torch.device(device or "cpu")))

    def sample_random_keys(
        self, batch: int, num_patches: int, device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | None:
        """(B, h, N, r) int64 random patch keys (-1 where none is left), or None for static patterns."""
        return None

    def spec(self) -> dict[str, Any]:
        """The keyword arguments of :func:`make_pattern` that rebuild this pattern."""
        out = {"name": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@lru_cache(maxsize=64)
def _plan_for(pattern: SparsePattern, num_patches: int) -> DiagonalPlan:
    n, p = _check_int("num_patches", num_patches, 1), pattern.num_prefix_tokens
    stencils = pattern.stencils(n)
    anchors = pattern.anchors(n)
    width = pattern.grid_width(n) if pattern.column_masked else 0
    slots_max = max(1, max(len(s) for s in stencils))
    keys = torch.full((pattern.num_heads, n, slots_max), -1, dtype=torch.int64)
    slots, shifts = [], []
    for h, stencil in enumerate(stencils):
        deltas = [d for d, _ in stencil]
        if len(set(deltas)) != len(deltas):
            raise ValueError(f"{pattern.name}: head {h} has a repeated offset; slots must be distinct")
        base = anchors[h] if anchors is not None else torch.arange(n)
        head_slots = []
        for j, (delta, shift) in enumerate(stencil):
            key = base + delta
            ok = (key >= 0) & (key < n)
            if width:
                col = base % width + shift
                ok &= (col >= 0) & (col < width)
            keys[h, :, j] = torch.where(ok, key, torch.full_like(key, -1))
            lo, hi = (0, n) if anchors is not None else (max(0, -delta), min(n, n - delta))
            head_slots.append((delta, lo, max(lo, hi)))
        slots.append(tuple(head_slots))
        shifts.append(tuple(s for _, s in stencil))
    n_allowed = (keys >= 0).sum(-1).to(torch.float32) + p
    return DiagonalPlan(
        p, n, tuple(slots), n_allowed, col_width=width, col_shifts=tuple(shifts) if width else None,
        anchors=anchors, keys=keys,
    )


# Masks are O(h T^2) bytes: keep only a few shapes.
@lru_cache(maxsize=12)
def _mask_for(pattern: SparsePattern, num_patches: int, device: str) -> torch.Tensor:
    if device != "cpu":
        return _mask_for(pattern, num_patches, "cpu").to(device)
    return _mask_from_plan(pattern.plan(num_patches), pattern.num_heads)


def _mask_from_plan(plan: DiagonalPlan, num_heads: int) -> torch.Tensor:
    p, n = plan.num_prefix, plan.num_patches
    t = p + n
    mask = torch.zeros(num_heads, t, t, dtype=torch.bool)
    mask[:, :p, :] = True
    mask[:, :, :p] = True
    keys = key_table(plan)
    h, q, j = (keys >= 0).nonzero(as_tuple=True)
    mask[h, p + q, p + keys[h, q, j]] = True
    return mask


# ------------------------------------------------------------------------------------------- 1-D


@dataclass(frozen=True)
class LongformerPattern(SparsePattern):
    """Longformer sliding window on the raster order: keys ``n + k*d`` for ``|k| <= window``.

    ``dilation`` is one int or one per head (Longformer's per-head dilation). The authors' benchmark
    used window 1, dilation 1 (their "DNA" arm is window 1, dilation 2); the CLS token is global.
    """

    window: int = 1
    dilation: int | tuple[int, ...] = 1
    name: ClassVar[str] = "longformer"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("window", self.window, 0)
        object.__setattr__(self, "dilation", _per_head("dilation", self.dilation, self.num_heads, 1))

    def stencils(self, num_patches: int):
        return tuple(tuple((k * d, 0) for k in range(-self.window, self.window + 1)) for d in self.dilation)


@dataclass(frozen=True)
class StridedPattern(SparsePattern):
    """Sparse Transformer "strided" (bidirectional): ``(i - j) mod stride == 0`` or ``|i - j| <= local``.

    ``stride=None`` means ``isqrt(N)`` (Sparse Transformer's ``l ~ sqrt(n)``; on a square grid that is
    exactly the column pattern). The authors' benchmark used stride 74 and no local band at N = 196.
    """

    stride: int | None = None
    local: int = 0
    name: ClassVar[str] = "strided"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stride is not None:
            _check_int("stride", self.stride, 1)
        _check_int("local", self.local, 0)

    def stencils(self, num_patches: int):
        stride = self.stride or max(1, math.isqrt(num_patches))
        deltas = {m * stride for m in range(-(num_patches // stride), num_patches // stride + 1)}
        deltas |= set(range(-self.local, self.local + 1))
        deltas = sorted(d for d in deltas if abs(d) < num_patches)
        return (tuple((d, 0) for d in deltas),) * self.num_heads


@dataclass(frozen=True)
class BigBirdPattern(SparsePattern):
    """BigBird as the Fibottention authors benchmarked it: band ``|i - j| <= window``, CLS global, and
    ``num_random`` random patch keys per (batch, head, query), redrawn on every call.

    The random keys are never a key the band already keeps, never the query itself and never CLS; a
    query draws fewer when fewer are left. ``fixed=True`` draws them once per (layer, N) from ``seed``
    and shares them over the batch (a static random graph, as in a fixed-random BigBird).
    """

    window: int = 1
    num_random_keys: int = 1
    fixed: bool = False
    seed: int = 0
    name: ClassVar[str] = "bigbird"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("window", self.window, 0)
        _check_int("num_random_keys", self.num_random_keys, 0)
        _check_int("seed", self.seed, 0)
        if not isinstance(self.fixed, bool):
            raise ValueError(f"fixed must be a bool, got {self.fixed!r}")

    @property
    def num_random(self) -> int:
        return self.num_random_keys

    def stencils(self, num_patches: int):
        return (tuple((d, 0) for d in range(-self.window, self.window + 1)),) * self.num_heads

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if self.fixed:
            out["name"] = "bigbird_fixed"
            del out["fixed"]
        return out

    def sample_random_keys(self, batch, num_patches, device=None, generator=None):
        if not self.num_random_keys:
            return None
        if self.fixed:
            table = _fixed_random_keys(self, num_patches)
            return table.to(device or "cpu").expand(batch, *table.shape[1:])
        return _draw_random_keys(self.plan(num_patches), batch, self.num_random_keys, generator, device)


def _draw_random_keys(plan: DiagonalPlan, batch: int, r: int, generator, device) -> torch.Tensor:
    """r distinct random patch keys per (b, h, n) outside the kept keys and the query itself (-1: none left).

    Rejection sampling (O(B h N r) per round), then an exact draw for the few rows still short.
    """
    keys = key_table(plan)  # (h, N, S) kept patch keys
    heads, n, _ = keys.shape
    query = torch.arange(n).view(1, 1, n)
    out = torch.full((batch, heads, n, r), -1, dtype=torch.int64)
    free = n - 1 - (keys >= 0).sum(-1) + (keys == query.view(1, n, 1)).sum(-1)  # (h, N), self excluded once
    for j in range(r):
        need = (free > j).unsqueeze(0).expand(batch, heads, n).clone()
        for _ in range(16):
            if not need.any():
                break
            cand = torch.randint(0, n, (batch, heads, n), generator=generator)
            bad = (cand.unsqueeze(-1) == keys.unsqueeze(0)).any(-1) | (cand == query)
            if j:
                bad |= (cand.unsqueeze(-1) == out[..., :j]).any(-1)
            take = need & ~bad
            out[..., j] = torch.where(take, cand, out[..., j])
            need &= ~take
        for b, h, q in need.nonzero().tolist():  # rare: rows with few free keys left
            taken = set(keys[h, q][keys[h, q] >= 0].tolist()) | {q} | set(out[b, h, q, :j].tolist())
            pool = [k for k in range(n) if k not in taken]
            pick = torch.randint(0, len(pool), (1,), generator=generator).item()
            out[b, h, q, j] = pool[pick]
    return out.to(device or "cpu")


@lru_cache(maxsize=32)
def _fixed_random_keys(pattern: BigBirdPattern, num_patches: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(pattern.seed * 1_000_003 + (pattern.layer or 0) * 7919 + num_patches)
    return _draw_random_keys(pattern.plan(num_patches), 1, pattern.num_random_keys, gen, "cpu")


# ------------------------------------------------------------------------------------------- 2-D


@dataclass(frozen=True)
class _GridPattern(SparsePattern):
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid is not None:
            h, w = self.grid
            object.__setattr__(self, "grid", (_check_int("grid[0]", h, 1), _check_int("grid[1]", w, 1)))

    def grid_width(self, num_patches: int) -> int:
        return grid_for(num_patches, self.grid)[1]


def _sides(k: int) -> tuple[int, int]:
    """NATTEN's window sides: floor(k/2) keys before the query, floor(k/2) + (k mod 2) - 1 after."""
    return k // 2, k // 2 + k % 2 - 1


@dataclass(frozen=True)
class Window2DPattern(_GridPattern):
    """2-D neighbourhood windows of ``kernel_size`` x ``kernel_size`` patches, ``dilation`` apart.

    Both may be one int or one per head (DiNAT alternates dilation 1 and 2 between layers; per head
    works as well). ``border="zero"``: the window is centred on the query and cut at the grid's edge
    (SASA-style zero padding: a corner query of a 7 x 7 window keeps 16 of 49 keys); runs as diagonals
    ``d*(i*W + j)`` plus a column mask. ``border="clamp"``: NATTEN's neighbourhood attention; per axis
    and per dilation group the window's centre is clamped so that it stays inside the grid and every
    query keeps ``k^2`` keys (needs ``k * d <= H, W``); runs with per-query anchors.
    """

    kernel_size: int | tuple[int, ...] = 3
    dilation: int | tuple[int, ...] = 1
    border: str = "zero"
    name: ClassVar[str] = "window2d"
    column_masked: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "kernel_size", _per_head("kernel_size", self.kernel_size, self.num_heads, 1))
        object.__setattr__(self, "dilation", _per_head("dilation", self.dilation, self.num_heads, 1))
        if self.border not in ("zero", "clamp"):
            raise ValueError(f"border must be 'zero' or 'clamp', got {self.border!r}")

    def stencils(self, num_patches: int):
        _, w = grid_for(num_patches, self.grid)
        out = []
        for k, d in zip(self.kernel_size, self.dilation):
            if self.border == "zero":
                left, right = _sides(k)
                span = range(-left, right + 1)
            else:
                span = range(k)  # from the clamped window's first row / column
            out.append(tuple((d * (i * w + j), d * j) for i in span for j in span))
        return tuple(out)

    def anchors(self, num_patches: int) -> torch.Tensor | None:
        if self.border == "zero":
            return None
        h, w = grid_for(num_patches, self.grid)
        rows, cols = torch.arange(num_patches) // w, torch.arange(num_patches) % w
        out = []
        for head, (k, d) in enumerate(zip(self.kernel_size, self.dilation)):
            if k * d > min(h, w):
                raise ValueError(
                    f"window2d border='clamp': head {head} has kernel {k} x dilation {d} = {k * d}, more than "
                    f"the {h}x{w} grid allows (NATTEN needs kernel * dilation <= each side)"
                )
            out.append(_clamped_start(rows, h, k, d) * w + _clamped_start(cols, w, k, d))
        return torch.stack(out)


def _clamped_start(x: torch.Tensor, length: int, k: int, d: int) -> torch.Tensor:
    """First coordinate of NATTEN's clamped window on one axis, with dilation groups."""
    group, pos = x % d, x // d
    group_len = (length - group + d - 1) // d  # positions of this dilation group
    left, _ = _sides(k)
    start = torch.clamp(pos - left, min=0)
    start = torch.minimum(start, group_len - k)
    return group + d * start


@dataclass(frozen=True)
class AxialPattern(_GridPattern):
    """Axial attention on the patch grid: the query's row (``axis="row"``), column (``"column"``),
    both (``"both"``: criss-cross), or row on even heads and column on odd heads (``"alternate"``).

    Columns are the diagonals ``k*W``; rows are the diagonals ``-W+1 .. W-1`` with the column mask.
    """

    axis: str = "alternate"
    name: ClassVar[str] = "axial"
    column_masked: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.axis not in ("row", "column", "both", "alternate"):
            raise ValueError(f"axis must be 'row', 'column', 'both' or 'alternate', got {self.axis!r}")

    def stencils(self, num_patches: int):
        h, w = grid_for(num_patches, self.grid)
        row = {(j, j) for j in range(-(w - 1), w)}
        col = {(i * w, 0) for i in range(-(h - 1), h)}
        out = []
        for head in range(self.num_heads):
            axis = self.axis if self.axis != "alternate" else ("row" if head % 2 == 0 else "column")
            chosen = row if axis == "row" else col if axis == "column" else row | col
            out.append(tuple(sorted(chosen)))
        return tuple(out)


# ------------------------------------------------------------------------------------------- registry

PATTERNS: dict[str, type] = {
    "fibottention": FibPattern,
    "longformer": LongformerPattern,
    "bigbird": BigBirdPattern,
    "bigbird_fixed": BigBirdPattern,
    "strided": StridedPattern,
    "window2d": Window2DPattern,
    "axial": AxialPattern,
}


def make_pattern(name: str, *, num_heads: int, num_prefix_tokens: int = 1, layer: int | None = 0, **options: Any):
    """Build a registered pattern by name: ``make_pattern("longformer", num_heads=3, window=2)``."""
    if name not in PATTERNS:
        raise ValueError(f"unknown attention pattern {name!r}; expected one of {sorted(PATTERNS)}")
    cls = PATTERNS[name]
    if name == "bigbird_fixed":
        if "fixed" in options and options["fixed"] is not True:
            raise ValueError("pattern 'bigbird_fixed' is BigBird with fixed=True; do not pass fixed=False")
        options["fixed"] = True
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        allowed = sorted(known - {"num_heads", "num_prefix_tokens", "layer"})
        raise ValueError(f"pattern {name!r} does not take {unknown}; its options are {allowed}")
    for key, value in options.items():
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes, tuple)):
            options[key] = tuple(value)  # lists (also from YAML configs) become hashable tuples
    return cls(num_heads=num_heads, num_prefix_tokens=num_prefix_tokens, layer=layer, **options)


def pattern_name(pattern) -> str:
    """Registered name of a pattern object."""
    if isinstance(pattern, FibPattern):
        return "fibottention"
    return pattern.spec()["name"]


def pattern_spec(pattern) -> dict[str, Any]:
    """Keyword arguments of :func:`make_pattern` that rebuild ``pattern`` (any registered pattern)."""
    if isinstance(pattern, FibPattern):
        return {"name": "fibottention", **asdict(pattern)}
    return pattern.spec()


def density(pattern, grid: int | tuple[int, int]) -> float:
    """Fraction of allowed (patch query, patch key) pairs on an ``H x W`` grid (an int means square),
    averaged over heads; BigBird's random keys count as what a query draws (``min(r, keys left)``)."""
    h, w = _as_grid(grid)
    n = h * w
    if isinstance(pattern, _GridPattern) and pattern.grid is None and h != w:
        pattern = type(pattern)(**{**{f.name: getattr(pattern, f.name) for f in fields(pattern)}, "grid": (h, w)})
    # Not cached: matching densities builds many candidate plans that a model never uses.
    plan = _plan_for.__wrapped__(pattern, n) if isinstance(pattern, SparsePattern) else diagonal_plan(pattern, n)
    kept = float((plan.n_allowed - plan.num_prefix).sum())
    r = getattr(pattern, "random_keys_per_query", 0)
    if r:
        keys = key_table(plan)
        free = n - 1 - (keys >= 0).sum(-1) + (keys == torch.arange(n).view(1, n, 1)).sum(-1)
        kept += float(free.clamp(min=0, max=r).sum())
    return kept / (pattern.num_heads * n * n)


# The main size knob of each pattern, for matching densities.
_KNOB = {"longformer": "window", "bigbird": "window", "bigbird_fixed": "window", "strided": "stride",
         "window2d": "kernel_size", "axial": None, "fibottention": None}


def match_density(name: str, grid: int | tuple[int, int], target: float, *, num_heads: int, **options: Any):
    """The pattern ``name`` whose size knob (window, stride or kernel) gives the density nearest ``target``.

    ``options`` fix the other knobs (e.g. ``num_random_keys`` for BigBird). Returns the pattern.
    """
    h, w = _as_grid(grid)
    n = h * w
    knob = _KNOB.get(name)
    if knob is None:
        return make_pattern(name, num_heads=num_heads, **options)
    # Densities grow with windows and kernels and fall with the stride (about 1 / stride): scan from
    # the small end, or for strides from about half the target's stride, and stop past the best.
    first_stride = max(1, int(0.5 / max(target, 1e-9)))
    values = {"window": range(n), "stride": range(first_stride, n + 1), "kernel_size": range(1, min(h, w) + 1)}[knob]
    best, best_err = None, math.inf
    for value in values:
        extra = {"grid": (h, w)} if name in ("window2d", "axial") and h != w else {}
        pattern = make_pattern(name, num_heads=num_heads, **{**options, **extra, knob: value})
        err = abs(density(pattern, (h, w)) - target)
        if err < best_err:
            best, best_err = pattern, err
        elif err > best_err:
            break
    return best
