"""Fibottention: per-head Fibonacci-diagonal sparse attention (pattern, backends, timm-compatible module),
and the fixed sparse patterns it is compared with (``patterns``) on the same backends."""

from .backends import BACKENDS, MODES, diagonal_plan, fib_attention, select_backend
from .module import FibottentionAttention
from .pattern import (
    PRESETS,
    FibPattern,
    fibottention_mask,
    fibottention_offsets,
    head_windows,
    pattern_density,
    pattern_offsets,
    robot_fibottention_offsets,
    wythoff_pair,
)
from .patterns import (
    PATTERNS,
    AxialPattern,
    BigBirdPattern,
    LongformerPattern,
    StridedPattern,
    Window2DPattern,
    density,
    make_pattern,
    match_density,
    pattern_name,
    pattern_spec,
)

__all__ = [
    "PATTERNS",
    "AxialPattern",
    "BigBirdPattern",
    "LongformerPattern",
    "StridedPattern",
    "Window2DPattern",
    "density",
    "make_pattern",
    "match_density",
    "pattern_name",
    "pattern_spec",
    "BACKENDS",
    "MODES",
    "PRESETS",
    "FibPattern",
    "FibottentionAttention",
    "diagonal_plan",
    "fib_attention",
    "fibottention_mask",
    "fibottention_offsets",
    "head_windows",
    "pattern_density",
    "pattern_offsets",
    "robot_fibottention_offsets",
    "select_backend",
    "wythoff_pair",
]
