"""The 9 block keypoints of the reference's keypoint observation and of the dataset's ``data/keypoint``.

The reference defines them once by drawing the T alone at pose (256, 300, 0) on a white 512 x 512
canvas, taking every non-white pixel in block coordinates, running farthest-point sampling (9 points)
from a start pixel drawn by ``np.random.default_rng(0)``, and adding a uniform [0, 1) jitter from the
same generator. We repeat that procedure on our pixel-exact drawing, so the local keypoints are the
reference's. A keypoint's world position is ``R(angle) @ k + position`` of the block's body origin.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from envs.pusht import geometry as geo
from envs.pusht import raster, render

N_BLOCK_KEYPOINTS = 9
_TEMPLATE_POSE = (256.0, 300.0, 0.0)


def farthest_point_sampling(points: np.ndarray, n_points: int, init_idx: int) -> np.ndarray:
    """Greedy farthest-point subset of ``points`` (N, 2), starting from ``points[init_idx]``."""
    chosen = [points[init_idx]]
    for _ in range(n_points - 1):
        dists = np.linalg.norm(points[:, None, :] - np.array(chosen)[None, :, :], axis=-1)
        chosen.append(points[np.argmax(dists.min(axis=1))])
    return np.array(chosen)


@lru_cache(maxsize=1)
def local_keypoints() -> np.ndarray:
    """The 9 block keypoints (9, 2) in body-local coordinates (read-only)."""
    size = geo.WINDOW_SIZE
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    for part in geo.tee_world(_TEMPLATE_POSE, draw_order=True):
        raster.paint(canvas, raster.closed_polygon_spans(part), render.BLOCK_FILL_COLOR)
        raster.paint(
            canvas, raster.merge(raster.polygon_outline_spans(part, render.OUTLINE_RADIUS)), render.BLOCK_COLOR
        )
    mask = (canvas != 255).any(axis=-1)
    rows, cols = np.nonzero(mask)  # row-major order, like boolean-mask indexing
    local = np.stack([cols - _TEMPLATE_POSE[0], rows - _TEMPLATE_POSE[1]], axis=-1).astype(np.float64)
    rng = np.random.default_rng(seed=0)
    kps = farthest_point_sampling(local, N_BLOCK_KEYPOINTS, rng.choice(len(local)))
    kps = kps + rng.uniform(0, 1, size=kps.shape)
    kps.setflags(write=False)
    return kps


def block_keypoints(pose: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """World positions (9, 2) of the block keypoints at block pose (x, y, angle)."""
    return geo.to_world(local_keypoints(), pose)
