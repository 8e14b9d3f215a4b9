"""envs.robomimic: the Lift / Can gymnasium envs (reset protocol, stored states, observations, errors, experts)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("robosuite")
pytest.importorskip("robomimic")

import gymnasium as gym  # noqa: E402

from envs.robomimic import RobomimicEnv, make_env_meta  # noqa: E402
from envs.robomimic.experts import run_expert  # noqa: E402


@pytest.fixture(scope="module")
def lift() -> RobomimicEnv:
    env = RobomimicEnv("lift", use_image_obs=False)
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift_images() -> RobomimicEnv:
    env = RobomimicEnv("lift")  # two 84 x 84 cameras, tuned rendering (the default)
    yield env
    env.close()


@pytest.fixture(scope="module")
def can() -> RobomimicEnv:
    env = RobomimicEnv("can", use_image_obs=False)
    yield env
    env.close()


def test_mujoco_py_is_a_stand_in_and_env_meta_matches_public_files():
    from envs.robomimic._backend import import_robomimic

    import_robomimic()
    import robomimic.envs.env_robosuite  # noqa: F401  (imports mujoco_py at the top in 0.3.0)

    assert getattr(sys.modules["mujoco_py"], "__fibpolicy_stub__", False)
    meta = make_env_meta("can")
    assert meta["env_name"] == "PickPlaceCan" and meta["type"] == 1 and meta["env_version"] == "1.4.1"
    kw = meta["env_kwargs"]
    assert kw["camera_names"] == ["agentview", "robot0_eye_in_hand"] and kw["camera_heights"] == 84
    assert kw["controller_configs"]["type"] == "OSC_POSE" and kw["controller_configs"]["control_delta"] is True
    assert kw["control_freq"] == 20 and kw["ignore_done"] is True


def test_egl_probe_stand_in_only_where_it_is_missing(monkeypatch):
    import importlib.util

    from envs.robomimic import _backend

    real_find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "egl_probe", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "egl_probe" else real_find_spec(name, *a))
    _backend._install_egl_probe_stub()
    stub = sys.modules["egl_probe"]
    assert stub.__fibpolicy_stub__ and stub.get_available_devices() == []
    monkeypatch.delitem(sys.modules, "egl_probe")
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    _backend._install_egl_probe_stub()  # the real package is installed here: no stand-in
    assert "egl_probe" not in sys.modules or not getattr(sys.modules["egl_probe"], "__fibpolicy_stub__", False)


def test_reset_is_deterministic_per_seed(lift: RobomimicEnv):
    s3 = lift.reset(seed=3)[0]
    state3 = lift.get_state()["states"]
    lift.step(np.full(7, 0.5))
    lift.reset(seed=4)
    state4 = lift.get_state()["states"]
    lift.reset(seed=3)
    np.testing.assert_array_equal(lift.get_state()["states"], state3)
    assert not np.allclose(state3[1:], state4[1:])
    # A fresh env (no cache) draws the same state from the same seed: numpy global seed, then reset.
    other = RobomimicEnv("lift", use_image_obs=False)
    try:
        o, _ = other.reset(seed=3)
        np.testing.assert_allclose(other.get_state()["states"], state3, atol=1e-12)
        np.testing.assert_allclose(o["object"], s3["object"], atol=1e-12)
    finally:
        other.close()
    assert lift.rs_env.hard_reset is False


def test_reset_to_stored_state_and_model(lift: RobomimicEnv):
    lift.reset(seed=5)
    for _ in range(3):
        lift.step(np.array([0.3, 0.0, -0.2, 0.0, 0.0, 0.0, 1.0]))
    stored = lift.get_state()
    obs_then = lift.observation()
    lift.reset(seed=6)
    obs, info = lift.reset(options={"state": stored["states"], "model": stored["model"]})
    np.testing.assert_allclose(lift.get_state()["states"], stored["states"], atol=1e-12)
    # MuJoCo's XML writer rounds numbers, so the rebuilt scene's kinematics differ very slightly.
    np.testing.assert_allclose(obs["robot0_eef_pos"], obs_then["robot0_eef_pos"], atol=1e-3)
    np.testing.assert_allclose(obs["object"][:3], obs_then["object"][:3], atol=1e-3)
    assert info == {"is_success": False} and lift.elapsed_steps == 0
    # The state alone (robomimic's reset_to {"states": ...}) works too.
    lift.reset(seed=7)
    lift.reset(options={"state": stored["states"]})
    np.testing.assert_allclose(lift.get_state()["states"], stored["states"], atol=1e-12)
    again = lift.observation()
    lift.reset(options={"state": stored["states"]})
    np.testing.assert_array_equal(lift.observation()["robot0_eef_pos"], again["robot0_eef_pos"])
    with pytest.raises(ValueError, match=r"options\['state'\] must be 32"):
        lift.reset(options={"state": np.zeros(5)})
    with pytest.raises(ValueError, match="unknown options"):
        lift.reset(options={"bogus": 1})


def test_observations_keys_shapes_dtypes_upright(lift_images: RobomimicEnv):
    env = lift_images
    obs, _ = env.reset(seed=0)
    shapes = {
        "agentview_image": (84, 84, 3),
        "robot0_eye_in_hand_image": (84, 84, 3),
        "robot0_eef_pos": (3,),
        "robot0_eef_quat": (4,),
        "robot0_gripper_qpos": (2,),
        "object": (10,),
    }
    assert {k: v.shape for k, v in obs.items()} == shapes
    assert obs["agentview_image"].dtype == np.uint8 and obs["robot0_eef_pos"].dtype == np.float64
    assert env.observation_space.contains(obs)
    # Upright: robosuite renders OpenGL-style (bottom row first); the env returns the flipped image.
    raw = env.sim.render(camera_name="agentview", height=84, width=84)
    np.testing.assert_array_equal(obs["agentview_image"], raw[::-1])
    assert env.gl_backend in ("egl", "osmesa", "glx")
    # Every standard robomimic key is available on request.
    everything = env.observation()
    for k in ("robot0_joint_pos", "robot0_joint_pos_cos", "robot0_eef_vel_lin", "robot0_gripper_qvel"):
        assert k in everything
    o, r, term, trunc, info = env.step(np.zeros(7))
    assert set(o) == set(shapes) and isinstance(r, float) and not term and not trunc


def test_tuned_rendering_stays_close_to_reference(lift_images: RobomimicEnv):
    ref = RobomimicEnv("lift", render_quality="reference")
    try:
        a, _ = lift_images.reset(seed=1)
        b, _ = ref.reset(seed=1)
        for key in ("agentview_image", "robot0_eye_in_hand_image"):
            diff = np.abs(a[key].astype(np.int16) - b[key].astype(np.int16)).mean()
            assert diff < 4.0, (key, diff)
        # The stored model keeps MuJoCo's default render quality even while rendering tuned.
        assert lift_images.model_xml() == ref.model_xml() or "offsamples" not in lift_images.model_xml()
    finally:
        ref.close()


def test_success_detection(lift: RobomimicEnv):
    lift.reset(seed=0)
    assert not lift.is_success()
    state = lift.get_state()["states"].copy()
    # Flat state = [time, qpos, qvel]; the cube's free joint z is qpos[9 + 2] (after 7 arm + 2 finger joints).
    state[1 + 11] = 0.90
    obs, info = lift.reset(options={"state": state})
    assert info["is_success"] and lift.is_success()
    _, reward, _, _, info = lift.step(np.zeros(7))
    assert reward == 1.0 or info["is_success"] is False  # sparse reward is 1 exactly when the cube is up


def test_bad_task_action_shape_and_nan(lift: RobomimicEnv):
    with pytest.raises(ValueError, match="'stack'"):
        RobomimicEnv("stack")
    lift.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(7,\).*got shape \(6,\)"):
        lift.step(np.zeros(6))
    with pytest.raises(ValueError, match="finite.*nan"):
        lift.step([0, 0, np.nan, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="array of numbers"):
        lift.step(["a"] * 7)


def test_gymnasium_registration():
    env = gym.make("fibpolicy/Lift-v0", use_image_obs=False)
    try:
        assert env.spec.max_episode_steps == 400
        obs, info = env.reset(seed=2)
        assert obs["object"].shape == (10,) and "is_success" in info
    finally:
        env.close()


def test_absolute_action_env_holds_its_pose():
    env = RobomimicEnv("lift", use_image_obs=False, control_delta=False)
    try:
        assert env.robot.controller.use_delta is False
        env.reset(seed=0)
        rs = env.rs_env
        pos = np.array(rs.sim.data.site_xpos[env.robot.eef_site_id])
        from scipy.spatial.transform import Rotation

        rot = Rotation.from_matrix(np.array(rs.sim.data.site_xmat[env.robot.eef_site_id]).reshape(3, 3)).as_rotvec()
        target = pos + [0.0, 0.0, 0.05]
        for _ in range(15):
            env.step(np.concatenate([target, rot, [-1.0]]))
        reached = np.array(rs.sim.data.site_xpos[env.robot.eef_site_id])
        assert np.abs(reached - target).max() < 0.01
    finally:
        env.close()


@pytest.mark.parametrize("seed", [1000, 1001])
def test_lift_expert_succeeds(lift: RobomimicEnv, seed: int):
    r = run_expert(lift, seed)
    assert r.success and len(r.actions) <= 80
    assert np.abs(r.actions).max() <= 1.0
    assert np.abs(np.diff(r.actions[:, :6], axis=0)).max() <= 0.35 + 1e-9  # smooth: bounded change per step
    assert r.states.shape == (len(r.actions), 32)


def test_can_expert_succeeds(can: RobomimicEnv):
    obs, _ = can.reset(seed=1000)
    assert obs["object"].shape == (14,)
    for seed in (1000, 1001):
        r = run_expert(can, seed)
        assert r.success and len(r.actions) <= 400, (seed, r.success_step, len(r.actions))
        assert r.states.shape[1] == 71
