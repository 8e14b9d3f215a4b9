"""Fibottention's attention pattern: per-head Fibonacci offsets and the boolean masks they induce.

Everything here is pure and cached per argument tuple: the pattern depends only on the number of
patch tokens, the number of heads, the window options and the layer index, never on the data.
The rules reproduce the released Fibottention code (see ``shared/specs/fibottention.md``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

__all__ = [
    "PRESETS",
    "FibPattern",
    "fibottention_offsets",
    "fibottention_mask",
    "head_windows",
    "robot_fibottention_offsets",
    "pattern_offsets",
    "pattern_density",
    "wythoff_pair",
]

Preset = Literal["release", "robot"]
# "release": the image-classification code behind the paper's numbers.
# "robot": the older preset the robot-learning experiments ran with (every window = N, older
# "modified" rule on heads > 1).
PRESETS: tuple[str, ...] = ("release", "robot")


def _floor_phi(n: int) -> int:
    """floor(n * phi) computed exactly with integers (phi = (1 + sqrt 5) / 2)."""
    return (n + math.isqrt(5 * n * n)) // 2


def wythoff_pair(i: int) -> tuple[int, int]:
    """First two columns (a_i, b_i) of row i (1-based) of the Wythoff array."""
    if i < 1:
        raise ValueError(f"head index i must be >= 1 (1-based), got {i}")
    m = _floor_phi(i)
    a = _floor_phi(m)
    # floor(m * phi^2) = floor(m * phi) + m because phi^2 = phi + 1.
    return a, a + m


def _fibonacci_run(a: int, b: int, window: int) -> list[int]:
    """The release's sequence rule: grow while the last term is <= window, then drop the last term."""
    seq = [a, b]
    while seq[-1] <= window:
        seq.append(seq[-1] + seq[-2])
    return seq[:-1]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _window(i: int, num_heads: int, w_min: int, w_max: int) -> int:
    if num_heads == 1:
        return w_min
    # Float division then truncation, in this order, as the release does (ViT-B's last head gets 64).
    return w_min + int((w_max - w_min) / (num_heads - 1) * (i - 1))


def head_windows(num_patches: int, num_heads: int, *, w_min: int = 5, w_max: int | None = None) -> list[int]:
    """Window w_i of each head i = 1..h in the release's rule (``w_max=None`` means ``num_patches // 3``)."""
    _check_int("num_patches", num_patches, 1)
    _check_int("num_heads", num_heads, 1)
    w_max = num_patches // 3 if w_max is None else w_max
    return [_window(i, num_heads, w_min, w_max) for i in range(1, num_heads + 1)]


def _layer_shuffle(per_head: list, layer: int | None) -> list:
    if layer is None:
        return per_head
    shuffled = list(per_head)
    # A private Random gives the permutation of the release's random.seed(layer); random.shuffle
    # without touching the global random state.
    random.Random(layer).shuffle(shuffled)
    return shuffled


@lru_cache(maxsize=256, typed=True)
def _release_offsets(
    num_patches: int, num_heads: int, w_min: int, w_max: int | None, modified: bool, layer: int | None
) -> tuple[tuple[int, ...], ...]:
    _check_int("num_patches", num_patches, 1)
    _check_int("num_heads", num_heads, 1)
    _check_int("w_min", w_min, 0)
    if layer is not None:
        _check_int("layer", layer, 0)
    if w_max is None:
        # Derived from N at run time. For tiny inputs N // 3 may fall below w_min; the release then
        # simply shrinks later windows, and so do we (only an explicit w_max < w_min is an error).
        w_max = num_patches // 3
    else:
        _check_int("w_max", w_max, 0)
        if w_min > w_max:
            raise ValueError(f"w_min ({w_min}) must be <= w_max ({w_max}): windows grow from w_min to w_max")
    per_head = []
    for i in range(1, num_heads + 1):
        a, b = wythoff_pair(i)
        if modified:
            b, a = b - a, a - (b - a)
        per_head.append(tuple(_fibonacci_run(a, b, _window(i, num_heads, w_min, w_max))))
    return tuple(_layer_shuffle(per_head, layer))


@lru_cache(maxsize=256, typed=True)
def _robot_offsets(num_patches: int, num_heads: int, layer: int | None) -> tuple[tuple[int, ...], ...]:
    _check_int("num_patches", num_patches, 1)
    _check_int("num_heads", num_heads, 1)
    if layer is not None:
        _check_int("layer", layer, 0)
    per_head = []
    for i in range(1, num_heads + 1):
        a, b = wythoff_pair(i)
        seq = _fibonacci_run(a, b, num_patches)
        if i > 1:
            seq = [i - 1, a - (i - 1)] + seq
        per_head.append(tuple(seq))
    return tuple(_layer_shuffle(per_head, layer))


def fibottention_offsets(
    num_patches: int,
    num_heads: int,
    *,
    w_min: int = 5,
    w_max: int | None = None,
    modified: bool = False,
    layer: int | None = None,
) -> list[list[int]]:
    """Per-head offset lists of the released Fibottention, optionally permuted by layer ``layer``'s shuffle.

    Duplicates are kept exactly as the sequence rule produces them (modified head 1 is [0, 1, 1, 2, 3, 5]).
    ``w_max=None`` means ``num_patches // 3``.
    """
    if not isinstance(modified, bool):
        raise ValueError(f"modified must be a bool, got {modified!r}")
    return [list(o) for o in _release_offsets(num_patches, num_heads, w_min, w_max, modified, layer)]


def robot_fibottention_offsets(num_patches: int, num_heads: int, *, layer: int | None = None) -> list[list[int]]:
    """Offsets of the robot-learning preset: every window = N, heads i > 1 prefixed with [i-1, a_i-(i-1)]."""
    return [list(o) for o in _robot_offsets(num_patches, num_heads, layer)]


def pattern_offsets(
    num_patches: int,
    num_heads: int,
    *,
    preset: Preset = "release",
    w_min: int = 5,
    w_max: int | None = None,
    modified: bool = False,
    layer: int | None = None,
) -> tuple[tuple[int, ...], ...]:
    """Offsets for either preset, as an immutable (cached) tuple of tuples."""
    if preset == "release":
        if not isinstance(modified, bool):
            raise ValueError(f"modified must be a bool, got {modified!r}")
        return _release_offsets(num_patches, num_heads, w_min, w_max, modified, layer)
    if preset == "robot":
        if modified or w_max is not None or w_min != 5:
            raise ValueError(
                "preset='robot' fixes every window to N and its own 'modified' rule; "
                f"got w_min={w_min}, w_max={w_max}, modified={modified} (leave them at their defaults)"
            )
        return _robot_offsets(num_patches, num_heads, layer)
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


@dataclass(frozen=True)
class FibPattern:
    """Everything that determines one layer's pattern, minus the number of patches (known at run time)."""

    num_heads: int
    num_prefix_tokens: int = 1
    preset: Preset = "release"
    w_min: int = 5
    w_max: int | None = None
    modified: bool = False
    layer: int | None = 0

    def __post_init__(self) -> None:
        _check_int("num_heads", self.num_heads, 1)
        _check_int("num_prefix_tokens", self.num_prefix_tokens, 0)
        # Validate the window options once, eagerly, with a representative N.
        pattern_offsets(
            max(3 * (self.w_max or 0), 3), self.num_heads, preset=self.preset, w_min=self.w_min,
            w_max=self.w_max, modified=self.modified, layer=self.layer,
        )

    def offsets(self, num_patches: int) -> tuple[tuple[int, ...], ...]:
        """Per-head offsets for ``num_patches`` patch tokens."""
        return pattern_offsets(
            num_patches, self.num_heads, preset=self.preset, w_min=self.w_min, w_max=self.w_max,
            modified=self.modified, layer=self.layer,
        )

    def distinct_offsets(self, num_patches: int) -> tuple[tuple[int, ...], ...]:
        """Per-head sorted sets of offsets that fall inside the patch block (< N); the mask is a set."""
        return tuple(tuple(sorted({o for o in head if o < num_patches})) for head in self.offsets(num_patches))

    def mask(self, num_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean (h, T, T) mask for ``num_patches`` patch tokens, cached per shape and device."""
        return _mask_for(self, num_patches, str(torch.device(device or "cpu")))


# Masks are O(h T^2) bytes (200 MB at T = 4097), so keep only a few shapes.
@lru_cache(maxsize=12, typed=True)
def _mask_for(pattern: FibPattern, num_patches: int, device: str) -> torch.Tensor:
    if device != "cpu":
        return _mask_for(pattern, num_patches, "cpu").to(device)
    _check_int("num_patches", num_patches, 1)
    p, n = pattern.num_prefix_tokens, num_patches
    t = p + n
    mask = torch.zeros(pattern.num_heads, t, t, dtype=torch.bool)
    mask[:, :p, :] = True
    mask[:, :, :p] = True
    idx = torch.arange(n)
    for h, offsets in enumerate(pattern.distinct_offsets(n)):
        block = mask[h, p:, p:]
        for o in offsets:
            block[idx[: n - o], idx[o:]] = True
            block[idx[o:], idx[: n - o]] = True
    return mask


def fibottention_mask(
    num_patches: int,
    num_heads: int,
    *,
    num_prefix_tokens: int = 1,
    w_min: int = 5,
    w_max: int | None = None,
    modified: bool = False,
    layer: int | None = None,
    preset: Preset = "release",
) -> torch.BoolTensor:
    """Boolean mask of shape (h, T, T), T = prefix + patches; prefix rows and columns are all True.

    The returned tensor is cached and shared: treat it as read-only (``.clone()`` before editing).
    """
    pattern = FibPattern(
        num_heads=num_heads, num_prefix_tokens=num_prefix_tokens, preset=preset, w_min=w_min,
        w_max=w_max, modified=modified, layer=layer,
    )
    return pattern.mask(num_patches)


def pattern_density(mask: torch.Tensor, num_prefix_tokens: int = 1, patches_only: bool = True) -> float:
    """Fraction of allowed (query, key) pairs, over the patch block only or over the whole T x T."""
    if patches_only:
        mask = mask[..., num_prefix_tokens:, num_prefix_tokens:]
    return mask.float().mean().item()
