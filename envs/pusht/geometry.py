"""PushT geometry: the T block, the goal pose, pose transforms and goal coverage.

All coordinates are pymunk's (origin top-left, y pointing down, 512 x 512 workspace). A block pose is
(x, y, angle) of the body's origin — what ``pymunk.Body.position`` / ``.angle`` report — not of its
centre of gravity.
"""

from __future__ import annotations

import math

import numpy as np
import shapely

WINDOW_SIZE = 512
AGENT_RADIUS = 15.0
WALL_RADIUS = 2.0
WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))

# The two convex parts of the T in body-local coordinates, in the reference's vertex order.
BAR = np.array([(-60.0, 30.0), (60.0, 30.0), (60.0, 0.0), (-60.0, 0.0)])
STEM = np.array([(-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0)])
TEE_PARTS = np.stack([BAR, STEM])  # (2, 4, 2)
# The same parts in the order chipmunk stores them (its convex hull starts at the lowest-x, lowest-y
# vertex and winds the other way). pymunk's debug draw outlines edges in this order, and a Bresenham
# line is not symmetric, so the renderer must use it to match the reference's pixels.
TEE_DRAW_PARTS = np.array(
    [
        [(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0)],
        [(-15.0, 30.0), (15.0, 30.0), (15.0, 120.0), (-15.0, 120.0)],
    ]
)
# Mean of the two parts' centroids (the reference's quirk), not the area centroid (0, 40.7).
TEE_COG = (BAR.mean(axis=0) + STEM.mean(axis=0)) / 2.0
TEE_AREA = 120.0 * 30.0 + 30.0 * 90.0

GOAL_POSE = np.array([256.0, 256.0, math.pi / 4])
SUCCESS_THRESHOLD = 0.95


def to_world(points: np.ndarray, pose: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """Map body-local points (..., 2) to world coordinates for a block pose (x, y, angle)."""
    x, y, angle = float(pose[0]), float(pose[1]), float(pose[2])
    c, s = math.cos(angle), math.sin(angle)
    px, py = points[..., 0], points[..., 1]
    # Same operation order as chipmunk's cpTransformPoint, so rounded pixels match pymunk's.
    return np.stack([c * px + (-s) * py + x, s * px + c * py + y], axis=-1)


def to_local(points: np.ndarray, pose: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """Inverse of :func:`to_world`: world points (..., 2) into the body frame of ``pose``."""
    x, y, angle = float(pose[0]), float(pose[1]), float(pose[2])
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = points[..., 0] - x, points[..., 1] - y
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)


def tee_world(pose: np.ndarray | tuple[float, float, float], draw_order: bool = False) -> np.ndarray:
    """World vertices (2, 4, 2) of the T's bar and stem at ``pose`` (in pymunk's order if ``draw_order``)."""
    return to_world(TEE_DRAW_PARTS if draw_order else TEE_PARTS, pose)


_GOAL_PARTS = shapely.polygons(tee_world(GOAL_POSE))


def coverage(pose: np.ndarray | tuple[float, float, float]) -> float:
    """Fraction of the goal T's area covered by the block T at ``pose`` (0 … 1)."""
    block = shapely.polygons(tee_world(pose))
    # The parts of each T only share an edge, so the union's intersection area is the sum over pairs.
    inter = shapely.intersection(block[:, None], _GOAL_PARTS[None, :])
    return float(shapely.area(inter).sum() / TEE_AREA)


def reward_from_coverage(cov: float) -> float:
    """The reference reward: coverage scaled so that the success threshold gives 1."""
    return float(np.clip(cov / SUCCESS_THRESHOLD, 0.0, 1.0))


def wrap_angle(angle: float | np.ndarray) -> float | np.ndarray:
    """Wrap an angle (or array of angles) to [-pi, pi)."""
    return (np.asarray(angle) + math.pi) % (2 * math.pi) - math.pi
