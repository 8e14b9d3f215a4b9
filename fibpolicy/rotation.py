"""Rotation conversions for absolute end-effector actions: axis-angle, matrices and the 6-d representation.

The 6-d representation is the one Diffusion Policy trains robomimic's absolute actions with (pytorch3d's
``matrix_to_rotation_6d``): the **first two rows** of the rotation matrix, row-major. Its inverse
normalises the first row, Gram-Schmidts the second against it and takes their cross product as the third
row. Axis-angle <-> matrix goes through scipy's ``Rotation`` (robust at angle pi, where a gripper pointing
down sits and where axis-angle flips sign: the reason for training on 6-d).

An absolute action of one arm is ``[pos 3, axis-angle 3, gripper 1]`` (7 numbers); its training form is
``[pos 3, rot6d 6, gripper 1]`` (10). Several arms are concatenated (14 <-> 20), as in the reference.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "ABS_ACTION_DIM",
    "ROT6D_ACTION_DIM",
    "abs_action_to_rot6d",
    "axis_angle_to_matrix",
    "axis_angle_to_rotation_6d",
    "matrix_to_axis_angle",
    "matrix_to_rotation_6d",
    "rot6d_action_to_abs",
    "rotation_6d_to_axis_angle",
    "rotation_6d_to_matrix",
]

ABS_ACTION_DIM = 7  # pos 3 + axis-angle 3 + gripper 1, per arm
ROT6D_ACTION_DIM = 10  # pos 3 + rot6d 6 + gripper 1, per arm


def _last_axis(x: np.ndarray, size: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] != size:
        raise ValueError(f"{what}: expected a last axis of {size}, got shape {np.shape(x)}")
    return x


def _matrices(matrix: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim < 2 or m.shape[-2:] != (3, 3):
        raise ValueError(f"{what}: expected (..., 3, 3) matrices, got shape {m.shape}")
    return m


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors (axis times angle, radians) -> (..., 3, 3) rotation matrices."""
    aa = _last_axis(axis_angle, 3, "axis_angle_to_matrix")
    return Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(*aa.shape[:-1], 3, 3)


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors with angle in [0, pi]."""
    m = _matrices(matrix, "matrix_to_axis_angle")
    return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(*m.shape[:-2], 3)


def matrix_to_rotation_6d(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first two rows, row-major (pytorch3d's convention)."""
    m = _matrices(matrix, "matrix_to_rotation_6d")
    return m[..., :2, :].reshape(*m.shape[:-2], 6).copy()


def rotation_6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt on the two rows (any two independent vectors are accepted)."""
    d6 = _last_axis(d6, 6, "rotation_6d_to_matrix")
    a1, a2 = d6[..., :3], d6[..., 3:]
    norm1 = np.linalg.norm(a1, axis=-1, keepdims=True)
    b1 = a1 / np.maximum(norm1, 1e-12)
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    norm2 = np.linalg.norm(b2, axis=-1, keepdims=True)
    if np.any(norm1 < 1e-12) or np.any(norm2 < 1e-12):
        raise ValueError("rotation_6d_to_matrix: the two 3-vectors must be non-zero and not parallel")
    b2 = b2 / norm2
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-2)


def axis_angle_to_rotation_6d(axis_angle: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 6)."""
    return matrix_to_rotation_6d(axis_angle_to_matrix(axis_angle))


def rotation_6d_to_axis_angle(d6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3) rotation vectors."""
    return matrix_to_axis_angle(rotation_6d_to_matrix(d6))


def _arms(x: np.ndarray, per_arm: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0 or x.shape[-1] % per_arm:
        raise ValueError(f"{what}: the last axis must be a multiple of {per_arm} (one block per arm), got shape {np.shape(x)}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // per_arm, per_arm)


def abs_action_to_rot6d(actions: np.ndarray) -> np.ndarray:
    """(..., 7k) ``[pos, axis-angle, gripper]`` per arm -> (..., 10k) ``[pos, rot6d, gripper]``."""
    arms = _arms(actions, ABS_ACTION_DIM, "abs_action_to_rot6d")
    out = np.concatenate([arms[..., :3], axis_angle_to_rotation_6d(arms[..., 3:6]), arms[..., 6:]], axis=-1)
    return out.reshape(*arms.shape[:-2], -1)


def rot6d_action_to_abs(actions: np.ndarray) -> np.ndarray:
    """(..., 10k) ``[pos, rot6d, gripper]`` per arm -> (..., 7k) ``[pos, axis-angle, gripper]`` (what the env takes)."""
    arms = _arms(actions, ROT6D_ACTION_DIM, "rot6d_action_to_abs")
    out = np.concatenate([arms[..., :3], rotation_6d_to_axis_angle(arms[..., 3:9]), arms[..., 9:]], axis=-1)
    return out.reshape(*arms.shape[:-2], -1)
