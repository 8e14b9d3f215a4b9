"""PushT environment: reset distribution, physics facts, reward, observations, API and errors."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

import envs  # noqa: F401  (registers fibpolicy/PushT-v0)
from envs.pusht import GOAL_POSE, PushTEnv, coverage, reference_reset_state
from envs.pusht import geometry as geo

COG_OFFSET = 45.0  # the block's centre of gravity is (0, 45) in body coordinates


def _hand_draws(seed: int) -> tuple[int, int, int, int, float]:
    """The reference's draws, written out: agent x, y in [50, 450), block x, y in [100, 400), Gaussian angle."""
    rs = np.random.RandomState(seed)
    ax = rs.randint(50, 450)
    ay = rs.randint(50, 450)
    bx = rs.randint(100, 400)
    by = rs.randint(100, 400)
    angle = rs.randn() * 2 * np.pi - np.pi
    return ax, ay, bx, by, angle


def test_seed_0_draws_are_the_reference_values():
    # Pinned so that a change in numpy's legacy generator (or in the draw order) cannot go unnoticed.
    np.testing.assert_allclose(reference_reset_state(0), [222, 97, 217, 292, 3.0079994677219553], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 7, 42, 100000, 100049])
def test_reset_matches_hand_computed_legacy_state(seed):
    ax, ay, bx, by, angle = _hand_draws(seed)
    np.testing.assert_array_equal(reference_reset_state(seed), [ax, ay, bx, by, angle])
    env = PushTEnv(obs_type="state")
    obs, info = env.reset(seed=seed)
    # Legacy order: position first at angle 0 (CoG at (bx, by + 45)), then the angle rotates the body
    # about its CoG, which moves the body origin.
    exp_x = bx + COG_OFFSET * math.sin(angle)
    exp_y = by + COG_OFFSET - COG_OFFSET * math.cos(angle)
    if info["n_contacts"] == 0:  # otherwise the one physics step after placing may push the block
        np.testing.assert_allclose(info["block_pose"], [exp_x, exp_y, angle], atol=1e-9)
        np.testing.assert_allclose(obs, [ax, ay, exp_x, exp_y, angle % (2 * math.pi)], atol=1e-9)
    np.testing.assert_allclose(info["agent_pos"], [ax, ay], atol=1e-12)  # kinematic, at rest


def test_non_legacy_reset_keeps_the_drawn_position():
    seed = 3
    _, _, bx, by, angle = _hand_draws(seed)
    env = PushTEnv(obs_type="state", legacy=False)
    _, info = env.reset(seed=seed)
    assert info["n_contacts"] == 0
    np.testing.assert_allclose(info["block_pose"], [bx, by, angle], atol=1e-9)


def test_reset_to_state():
    env = PushTEnv(obs_type="state", legacy=False)
    obs, info = env.reset(options={"reset_to_state": [100.0, 450.0, 256.0, 256.0, math.pi / 4]})
    np.testing.assert_allclose(obs, [100.0, 450.0, 256.0, 256.0, math.pi / 4], atol=1e-9)
    assert info["coverage"] == pytest.approx(1.0, abs=1e-9)
    assert info["is_success"]
    # A negative angle is reported modulo 2 pi in the observation, raw in info.
    obs, info = env.reset(options={"reset_to_state": np.array([100.0, 450.0, 300.0, 200.0, -1.0])})
    assert obs[4] == pytest.approx(2 * math.pi - 1.0)
    assert info["block_pose"][2] == pytest.approx(-1.0)


def test_coverage_of_goal_pose_is_one_and_of_far_pose_zero():
    assert coverage(GOAL_POSE) == pytest.approx(1.0, abs=1e-12)
    assert coverage((100.0, 100.0, 0.0)) == 0.0
    assert coverage((256.0, 256.0, math.pi / 4 + math.pi)) < 0.5
    assert geo.reward_from_coverage(0.95 * 0.5) == pytest.approx(0.5)
    assert geo.reward_from_coverage(0.97) == 1.0


def test_coverage_agrees_with_the_references_multipolygon_computation():
    goal = MultiPolygon([Polygon(p) for p in geo.tee_world(GOAL_POSE)])
    rng = np.random.default_rng(0)
    for _ in range(50):
        pose = np.array([256, 256, math.pi / 4]) + rng.normal(0, [30, 30, 0.5])
        block = MultiPolygon([Polygon(p) for p in geo.tee_world(pose)])
        expected = shapely.area(goal.intersection(block)) / goal.area
        assert coverage(pose) == pytest.approx(expected, abs=1e-9)


def test_block_is_the_reference_t():
    env = PushTEnv(obs_type="state")
    env.reset(seed=0)
    block = env.sim.block
    # pymunk stores the parts in its own vertex order; the renderer draws in that order.
    shapes = sorted(block.shapes, key=lambda s: s.area, reverse=True)
    assert [tuple(v) for v in shapes[0].get_vertices()] == [tuple(v) for v in geo.TEE_DRAW_PARTS[0]]
    assert [tuple(v) for v in shapes[1].get_vertices()] == [tuple(v) for v in geo.TEE_DRAW_PARTS[1]]
    assert tuple(block.center_of_gravity) == pytest.approx((0.0, 45.0))
    import pymunk

    assert block.moment == pytest.approx(2 * pymunk.moment_for_poly(1.0, [tuple(v) for v in geo.BAR]))
    assert block.mass == 1.0
    assert all(s.friction == 0.0 for s in block.shapes)
    assert env.sim.space.damping == 0.0
    assert env.sim.agent.body_type == pymunk.Body.KINEMATIC


def test_block_stops_when_not_pushed_and_agent_ignores_walls():
    env = PushTEnv(obs_type="state", legacy=False)
    env.reset(options={"reset_to_state": [256.0, 480.0, 256.0, 250.0, 0.0]})
    for _ in range(12):  # push the stem upward
        _, _, _, _, info = env.step([256.0, 330.0])
    assert info["n_contacts"] > 0
    moved = np.abs(info["block_pose"] - [256.0, 250.0, 0.0]).max()
    assert moved > 20
    _, _, _, _, info = env.step([40.0, 480.0])  # move away; the last impulse still acts one substep
    pose = info["block_pose"].copy()
    for _ in range(3):  # no contact: the block stays put (damping 0 removes all velocity)
        _, _, _, _, info = env.step([40.0, 480.0])
        assert info["n_contacts"] == 0
    np.testing.assert_array_equal(info["block_pose"], pose)
    for _ in range(10):  # targets beyond the walls are reached: the agent is kinematic, actions unclipped
        _, _, _, _, info = env.step([-30.0, 480.0])
    assert info["agent_pos"][0] < 0


def test_determinism_same_seed_same_actions():
    rng = np.random.default_rng(1)
    actions = rng.uniform(50, 460, size=(40, 2))

    def run(seed):
        env = PushTEnv(obs_type="pixels_agent_pos")
        obs, _ = env.reset(seed=seed)
        states, pixels = [], [obs["pixels"]]
        for a in actions:
            obs, _, _, _, info = env.step(a)
            states.append(np.r_[info["agent_pos"], info["block_pose"], info["n_contacts"]])
            pixels.append(obs["pixels"])
        return np.array(states), np.array(pixels)

    s1, p1 = run(5)
    s2, p2 = run(5)
    s3, _ = run(6)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(s1, s3)


def test_unseeded_reset_follows_the_env_generator():
    e1, e2 = PushTEnv(obs_type="state"), PushTEnv(obs_type="state")
    e1.reset(seed=11)
    e2.reset(seed=11)
    np.testing.assert_array_equal(e1.reset()[0], e2.reset()[0])


def test_pixel_observation_shape_dtype_range():
    env = PushTEnv()
    obs, info = env.reset(seed=0)
    assert set(obs) == {"pixels", "agent_pos"}
    px = obs["pixels"]
    assert px.shape == (3, 96, 96) and px.dtype == np.float32
    assert px.min() >= 0.0 and px.max() <= 1.0
    assert (px == 1.0).all(axis=0).mean() > 0.5  # mostly white background
    np.testing.assert_allclose(obs["agent_pos"], info["agent_pos"])
    assert env.observation_space.contains(obs)
    # The same frame as the uint8 image the dataset stores.
    np.testing.assert_array_equal(px, env.observation_image().transpose(2, 0, 1).astype(np.float32) / 255)
    small = PushTEnv(render_size=64)
    assert small.reset(seed=0)[0]["pixels"].shape == (3, 64, 64)


def test_keypoint_and_state_observations():
    env = PushTEnv(obs_type="keypoints")
    obs, info = env.reset(seed=2)
    assert obs.shape == (40,)
    from envs.pusht import block_keypoints

    np.testing.assert_allclose(obs[:18], block_keypoints(info["block_pose"]).ravel())
    np.testing.assert_allclose(obs[18:20], info["agent_pos"])
    np.testing.assert_array_equal(obs[20:], np.ones(20))
    state = PushTEnv(obs_type="state")
    obs, _ = state.reset(seed=2)
    assert obs.shape == (5,) and obs.dtype == np.float64 and 0 <= obs[4] < 2 * math.pi


def test_step_returns_gymnasium_tuple_with_info():
    env = PushTEnv(obs_type="state")
    env.reset(seed=0)
    out = env.step(np.array([256.0, 256.0], dtype=np.float32))
    assert len(out) == 5
    _, reward, terminated, truncated, info = out
    assert {"coverage", "is_success", "n_contacts", "block_pose", "agent_pos"} <= set(info)
    assert reward == pytest.approx(min(info["coverage"] / 0.95, 1.0))
    assert terminated == (info["coverage"] > 0.95) == info["is_success"]
    assert truncated is False
    assert isinstance(info["n_contacts"], int)


def test_registered_env_has_300_step_limit():
    env = gym.make("fibpolicy/PushT-v0", obs_type="state")
    env.reset(seed=0)
    truncated = False
    for t in range(300):
        _, _, terminated, truncated, _ = env.step([40.0 + t % 2, 40.0])
        assert not terminated
    assert truncated


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized:UserWarning")
@pytest.mark.filterwarnings("ignore:.*alternative render modes:UserWarning")
def test_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    for obs_type in ("state", "pixels_agent_pos", "keypoints"):
        check_env(PushTEnv(obs_type=obs_type, render_mode="rgb_array"), skip_render_check=False)


def test_render_video_frame_with_action_cross():
    env = PushTEnv(obs_type="state", render_mode="rgb_array", video_size=192)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (192, 192, 3) and frame.dtype == np.uint8
    assert not ((frame[..., 0] == 255) & (frame[..., 1] == 0) & (frame[..., 2] == 0)).any()
    env.step([100.0, 100.0])
    frame = env.render()
    red = (frame[..., 0] == 255) & (frame[..., 1] == 0) & (frame[..., 2] == 0)
    rows, cols = np.nonzero(red)
    assert red.sum() > 5
    assert abs(rows.mean() - 100 / 512 * 192) < 2 and abs(cols.mean() - 100 / 512 * 192) < 2
    # The observation image never shows the marker.
    img = env.observation_image()
    assert not ((img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)).any()


def test_render_without_mode_returns_none():
    env = PushTEnv(obs_type="state")
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


@pytest.mark.parametrize("obs_type", ["image", "pixels", "", None])
def test_unknown_obs_type_is_rejected(obs_type):
    with pytest.raises(ValueError, match="obs_type"):
        PushTEnv(obs_type=obs_type)


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="render_mode"):
        PushTEnv(render_mode="human")
    with pytest.raises(ValueError, match="render_size"):
        PushTEnv(render_size=0)


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(3), r"shape \(2,\)"),
        (np.zeros((1, 2)), r"shape \(2,\)"),
        ([1.0], r"shape \(2,\)"),
        ([np.nan, 1.0], "finite"),
        ([1.0, np.inf], "finite"),
        (None, "None"),
        ("ab", "2 numbers"),
    ],
)
def test_bad_actions_are_rejected(action, match):
    env = PushTEnv(obs_type="state")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_bad_reset_state_and_step_before_reset():
    env = PushTEnv(obs_type="state")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step([1.0, 2.0])
    with pytest.raises(ValueError, match="reset_to_state"):
        env.reset(options={"reset_to_state": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match="reset_to_state"):
        env.reset(options={"reset_to_state": [1.0, 2.0, 3.0, 4.0, np.nan]})
