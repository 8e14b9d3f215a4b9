"""fibpolicy.rotation against scipy and against the reference's 6-d convention (first two matrix rows)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fibpolicy.rotation import (
    abs_action_to_rot6d,
    axis_angle_to_matrix,
    axis_angle_to_rotation_6d,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rot6d_action_to_abs,
    rotation_6d_to_axis_angle,
    rotation_6d_to_matrix,
)

RNG = np.random.default_rng(0)


def _random_axis_angles(n: int) -> np.ndarray:
    return Rotation.random(n, random_state=1).as_rotvec()


def _near_pi(n: int) -> np.ndarray:
    """Gripper-down orientations: angles within 1e-3 of pi about random axes, both signs."""
    axis = RNG.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.pi - RNG.uniform(0, 1e-3, size=(n, 1)) * RNG.choice([-1, 1], size=(n, 1))
    return axis * angle


def test_matrices_agree_with_scipy():
    aa = _random_axis_angles(200)
    np.testing.assert_allclose(axis_angle_to_matrix(aa), Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)
    mats = Rotation.from_rotvec(aa).as_matrix()
    np.testing.assert_allclose(matrix_to_axis_angle(mats), Rotation.from_matrix(mats).as_rotvec(), atol=1e-10)


def test_six_d_is_the_first_two_rows_row_major():
    mats = Rotation.random(50, random_state=2).as_matrix()
    d6 = matrix_to_rotation_6d(mats)
    assert d6.shape == (50, 6)
    np.testing.assert_array_equal(d6[:, :3], mats[:, 0, :])
    np.testing.assert_array_equal(d6[:, 3:], mats[:, 1, :])
    # a hand-written case: a quarter turn about z has rows (0,-1,0), (1,0,0)
    np.testing.assert_allclose(axis_angle_to_rotation_6d(np.array([0, 0, np.pi / 2])), [0, -1, 0, 1, 0, 0], atol=1e-12)


@pytest.mark.parametrize("make", [_random_axis_angles, _near_pi], ids=["random", "near_pi"])
def test_round_trips(make):
    aa = make(300)
    back = rotation_6d_to_axis_angle(axis_angle_to_rotation_6d(aa))
    # axis-angle is two-valued at pi: compare the rotations, not the vectors
    np.testing.assert_allclose(Rotation.from_rotvec(back).as_matrix(), Rotation.from_rotvec(aa).as_matrix(), atol=1e-9)
    assert np.all(np.linalg.norm(back, axis=-1) <= np.pi + 1e-9)
    mats = Rotation.from_rotvec(aa).as_matrix()
    np.testing.assert_allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(mats)), mats, atol=1e-12)


def test_inverse_gram_schmidts_unnormalised_input():
    mats = Rotation.random(20, random_state=3).as_matrix()
    d6 = matrix_to_rotation_6d(mats)
    noisy = d6 * RNG.uniform(0.5, 2.0, size=(20, 1))  # scaled rows
    noisy[:, 3:] += 0.3 * noisy[:, :3]  # second row no longer orthogonal to the first
    out = rotation_6d_to_matrix(noisy)
    np.testing.assert_allclose(out @ np.swapaxes(out, -1, -2), np.broadcast_to(np.eye(3), (20, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(out), 1.0, atol=1e-12)
    np.testing.assert_allclose(out, mats, atol=1e-12)  # row 1 normalised, row 2 orthogonalised against it


@pytest.mark.parametrize("arms", [1, 2])
def test_action_forms_round_trip(arms):
    n = 40
    blocks = []
    for _ in range(arms):
        blocks += [RNG.uniform(-1, 1, size=(n, 3)), _near_pi(n), RNG.uniform(-1, 1, size=(n, 1))]
    abs_actions = np.concatenate(blocks, axis=-1)
    six = abs_action_to_rot6d(abs_actions)
    assert six.shape == (n, 10 * arms)
    for a in range(arms):
        np.testing.assert_array_equal(six[:, 10 * a : 10 * a + 3], abs_actions[:, 7 * a : 7 * a + 3])  # position
        np.testing.assert_array_equal(six[:, 10 * a + 9], abs_actions[:, 7 * a + 6])  # gripper
    back = rot6d_action_to_abs(six.reshape(2, n // 2, -1)).reshape(n, -1)  # any leading shape
    assert back.shape == abs_actions.shape
    np.testing.assert_allclose(abs_action_to_rot6d(back), six, atol=1e-9)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"rot6d_action_to_abs: the last axis must be a multiple of 10.*\(4, 7\)"):
        rot6d_action_to_abs(np.zeros((4, 7)))
    with pytest.raises(ValueError, match="multiple of 7"):
        abs_action_to_rot6d(np.zeros((4, 10)))
    with pytest.raises(ValueError, match="last axis of 6"):
        rotation_6d_to_matrix(np.zeros((4, 5)))
