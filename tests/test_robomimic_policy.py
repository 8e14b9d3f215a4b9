"""robomimic tasks: the HDF5 -> zarr cache, its errors, the policy-input contract with the env, and resets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from scipy.spatial.transform import Rotation

pytest.importorskip("robosuite")
pytest.importorskip("robomimic")
h5py = pytest.importorskip("h5py")

from conftest import compose, record_lift_demos, task_shape_meta  # noqa: E402
from fibpolicy.data import ReplayBuffer, SequenceDataset, ensure_robomimic_cache, initial_states  # noqa: E402
from fibpolicy.data.replay_buffer import ReplayBufferError  # noqa: E402
from fibpolicy.data.robomimic import convert_robomimic  # noqa: E402
from fibpolicy.rotation import rot6d_action_to_abs  # noqa: E402

WINDOW = dict(horizon=16, n_obs_steps=2, n_action_steps=8)


@pytest.fixture(scope="module")
def lift_hdf5(tmp_path_factory) -> Path:
    """Two scripted Lift demos with both 84 px cameras (the image tasks' size)."""
    path = tmp_path_factory.mktemp("rm_policy") / "lift_expert_2.hdf5"
    record_lift_demos(path, episodes=2, seed_start=0)
    return path


@pytest.fixture()
def hdf5_copy(lift_hdf5, tmp_path) -> Path:
    path = tmp_path / lift_hdf5.name
    shutil.copy2(lift_hdf5, path)
    return path


def test_cache_holds_the_declared_keys_and_10d_actions(lift_hdf5, tmp_path, capsys):
    meta = task_shape_meta("lift_image")
    store = ensure_robomimic_cache(lift_hdf5, tmp_path / "c.zarr", meta, progress=False)
    buf = ReplayBuffer.open(store)
    assert sorted(buf.keys()) == sorted([*meta["obs"], "action"])
    with h5py.File(lift_hdf5, "r") as f:
        lengths = [len(f[f"data/demo_{i}/actions"]) for i in range(2)]
        abs_actions = np.concatenate([f[f"data/demo_{i}/actions_abs"][()] for i in range(2)])
        images = np.concatenate([f[f"data/demo_{i}/obs/agentview_image"][()] for i in range(2)])
    assert list(buf.episode_lengths) == lengths
    np.testing.assert_array_equal(np.asarray(buf["agentview_image"][:]), images)  # uint8 HWC, lossless
    actions = np.asarray(buf["action"][:], dtype=np.float64)
    assert actions.shape == (sum(lengths), 10)
    back = rot6d_action_to_abs(actions)
    np.testing.assert_allclose(back[:, :3], abs_actions[:, :3], atol=1e-6)
    np.testing.assert_allclose(back[:, 6], abs_actions[:, 6], atol=1e-6)
    np.testing.assert_allclose(Rotation.from_rotvec(back[:, 3:6]).as_matrix(),
                               Rotation.from_rotvec(abs_actions[:, 3:6]).as_matrix(), atol=1e-5)
    # a second call reuses the cache untouched
    stamp = (store / "zarr.json").stat().st_mtime_ns if (store / "zarr.json").exists() else store.stat().st_mtime_ns
    capsys.readouterr()
    assert ensure_robomimic_cache(lift_hdf5, store, meta, progress=False) == store
    assert "rebuilding" not in capsys.readouterr().err and "cached" not in capsys.readouterr().err
    assert ((store / "zarr.json").stat().st_mtime_ns if (store / "zarr.json").exists() else store.stat().st_mtime_ns) == stamp


def test_cache_is_rebuilt_when_its_source_changes(hdf5_copy, tmp_path, capsys):
    meta = task_shape_meta("lift_lowdim")
    store = tmp_path / "c.zarr"
    ensure_robomimic_cache(hdf5_copy, store, meta, progress=False)
    assert ReplayBuffer.open(store).n_episodes == 2
    capsys.readouterr()
    # the same bytes, touched: rebuilt (size and mtime are the signature)
    st = hdf5_copy.stat()
    os.utime(hdf5_copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ensure_robomimic_cache(hdf5_copy, store, meta, progress=False)
    assert "out of date (mtime_ns changed): rebuilding" in capsys.readouterr().err
    # a demo removed: rebuilt, and the cache now holds one episode
    with h5py.File(hdf5_copy, "a") as f:
        del f["data/demo_1"]
    ensure_robomimic_cache(hdf5_copy, store, meta, progress=False)
    assert "rebuilding" in capsys.readouterr().err
    assert ReplayBuffer.open(store).n_episodes == 1
    # other conversion settings rebuild it too
    del meta["obs"]["robot0_eef_quat"]
    ensure_robomimic_cache(hdf5_copy, store, meta, progress=False)
    assert "out of date (obs_keys changed)" in capsys.readouterr().err
    assert "robot0_eef_quat" not in ReplayBuffer.open(store).keys()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "temporary store left behind"


def test_delta_actions_as_an_option(lift_hdf5, tmp_path):
    meta = task_shape_meta("lift_lowdim")
    meta["action"] = {"shape": [7], "source": "action"}
    store = ensure_robomimic_cache(lift_hdf5, tmp_path / "d.zarr", meta, action_key="actions", action_form="delta", progress=False)
    with h5py.File(lift_hdf5, "r") as f:
        np.testing.assert_allclose(np.asarray(ReplayBuffer.open(store)["action"][: len(f["data/demo_0/actions"])]),
                                   f["data/demo_0/actions"][()], atol=1e-6)


def test_errors_name_the_file_and_key(hdf5_copy, tmp_path):
    meta = task_shape_meta("lift_image")
    name = str(hdf5_copy)
    with pytest.raises(ReplayBufferError, match=rf"{name}: data/demo_0 has no 'absolute' dataset .*absolute actions"):
        convert_robomimic(hdf5_copy, tmp_path / "a.zarr", meta, action_key="absolute", progress=False)
    with pytest.raises(ReplayBufferError, match=rf"{name}: 'actions' looks like delta actions"):
        convert_robomimic(hdf5_copy, tmp_path / "b.zarr", meta, action_key="actions", progress=False)
    wrong = task_shape_meta("lift_image")
    wrong["obs"]["robot0_eef_pos"]["shape"] = [4]
    with pytest.raises(ReplayBufferError, match=rf"{name}: data/demo_0/obs/robot0_eef_pos"):
        convert_robomimic(hdf5_copy, tmp_path / "c.zarr", wrong, progress=False)
    with h5py.File(hdf5_copy, "a") as f:
        del f["data/demo_1/obs/robot0_eye_in_hand_image"]
    with pytest.raises(ReplayBufferError, match=rf"{name}: data/demo_1/obs has no 'robot0_eye_in_hand_image'"):
        convert_robomimic(hdf5_copy, tmp_path / "d.zarr", meta, progress=False)
    assert not list(tmp_path.glob("*.zarr")), "a failed conversion left a store behind"
    with pytest.raises(FileNotFoundError, match="missing.hdf5 does not exist"):
        ensure_robomimic_cache(tmp_path / "missing.hdf5", tmp_path / "e.zarr", meta)
    with pytest.raises(ValueError, match="action_form must be one of"):
        convert_robomimic(hdf5_copy, tmp_path / "f.zarr", meta, action_form="rot6d")


def test_delta_actions_are_refused_before_the_file_is_converted(hdf5_copy, tmp_path, monkeypatch):
    from fibpolicy.data import robomimic

    monkeypatch.setattr(robomimic, "DELTA_CHECK_DEMOS", 1)
    written = []
    monkeypatch.setattr(robomimic.ReplayBufferWriter, "add_episode", lambda self, *a, **k: written.append(a))
    with pytest.raises(ReplayBufferError, match=r"'actions' looks like delta actions .* first 1 demos"):
        convert_robomimic(hdf5_copy, tmp_path / "a.zarr", task_shape_meta("lift_lowdim"), action_key="actions",
                          progress=False)
    assert written == [], "demos were converted before the delta check refused the file"


def test_a_store_that_is_not_a_cache_is_not_overwritten(lift_hdf5, tmp_path):
    from fibpolicy.data import write_replay_buffer

    other = tmp_path / "mine.zarr"
    write_replay_buffer(other, {"action": np.zeros((3, 10), np.float32)}, [3])
    with pytest.raises(ReplayBufferError, match=r"mine.zarr exists but is not a cache of a robomimic file"):
        ensure_robomimic_cache(lift_hdf5, other, task_shape_meta("lift_lowdim"), progress=False)
    assert ReplayBuffer.open(other).n_steps == 3


def test_initial_states_are_the_demos_first_states(lift_hdf5):
    states = initial_states(lift_hdf5)
    with h5py.File(lift_hdf5, "r") as f:
        for i, s in enumerate(states):
            np.testing.assert_array_equal(s["state"], f[f"data/demo_{i}/states"][0])
    assert len(initial_states(lift_hdf5, n=1, start=1)) == 1
    with pytest.raises(ValueError, match="6 train inits from demo 0 asked for, the file has 2 demos"):
        initial_states(lift_hdf5, n=6)


@pytest.mark.parametrize("task", ["lift_image", "lift_lowdim"])
def test_env_observation_and_dataset_sample_agree(lift_hdf5, task):
    """The env reset to a demo's state t and the dataset's sample at row t give the same policy input."""
    data_dir = lift_hdf5.parent
    cfg = compose("train", [f"task={task}", f"data_dir={data_dir}", "task.robomimic.demos=2",
                            "task.evaluator.n_train=1", "task.evaluator.n_test=1"])
    instantiate(cfg.task.prepare, _convert_="all", progress=False)
    evaluator = instantiate(cfg.task.evaluator, _convert_="all")
    dataset = SequenceDataset(cfg.task.dataset.zarr_path, instantiate(cfg.task.shape_meta, _convert_="all"),
                              val_ratio=0.0, load_full_obs=True, **WINDOW)
    env = evaluator.env_fn()
    with h5py.File(lift_hdf5, "r") as f:
        states = f["data/demo_0/states"][()]
        abs_actions = f["data/demo_0/actions_abs"][()]
        model = f["data/demo_0"].attrs["model_file"]  # the demo's own scene (Lift draws a cube size per demo)
    try:
        for t in (0, 5, 17):
            obs, _ = env.reset(options={"state": states[t], "model": model})
            policy_in = evaluator.policy_obs({k: np.asarray(v)[None] for k, v in obs.items()})
            sample = dataset[t + 1]  # window t + 1 starts at row t (pad_before = 1)
            assert sorted(policy_in) == sorted(sample["obs"])
            for key, value in policy_in.items():
                np.testing.assert_allclose(sample["obs"][key][0].numpy(), value[0], rtol=0, atol=1e-5, err_msg=f"{task} {key} t={t}")
            # the dataset's 10-d action, mapped back for the env, is the demo's absolute action
            env_action = evaluator.runner_kwargs["action_map"](sample["action"][0].numpy()[None])[0]
            np.testing.assert_allclose(env_action[[0, 1, 2, 6]], abs_actions[t][[0, 1, 2, 6]], atol=1e-5)
            np.testing.assert_allclose(Rotation.from_rotvec(env_action[3:6]).as_matrix(),
                                       Rotation.from_rotvec(abs_actions[t][3:6]).as_matrix(), atol=1e-5)
    finally:
        env.close()


def test_a_successful_episode_is_frozen_until_reset(lift_hdf5):
    from envs.robomimic import RobomimicEnv, env_meta_from_dataset

    env = RobomimicEnv(env_meta=env_meta_from_dataset(lift_hdf5), use_image_obs=False, control_delta=False,
                       terminate_on_success=True)
    with h5py.File(lift_hdf5, "r") as f:
        states, actions = f["data/demo_0/states"][()], f["data/demo_0/actions_abs"][()]
    try:
        env.reset(options={"state": states[-1]})  # the demo's last state: the cube is lifted
        obs, reward, terminated, _, info = env.step(actions[-1])
        assert terminated and reward == 1.0 and info["is_success"]
        sim_state = env.rs_env.sim.get_state().flatten().copy()
        for _ in range(3):
            again = env.step(np.zeros(7))
            assert again[2] and again[1] == reward
            np.testing.assert_array_equal(again[0]["robot0_eef_pos"], obs["robot0_eef_pos"])
        np.testing.assert_array_equal(env.rs_env.sim.get_state().flatten(), sim_state)  # nothing simulated
        obs, _ = env.reset(options={"state": states[0]})
        _, _, terminated, _, _ = env.step(actions[0])
        assert not terminated
    finally:
        env.close()
