"""Fibottention: per-head Fibonacci-diagonal sparse attention (pattern, backends, timm-compatible module)."""

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

__all__ = [
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
