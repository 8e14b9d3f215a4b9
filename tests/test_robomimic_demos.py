"""Scripted-expert robomimic demos in robomimic's HDF5 layout (envs.robomimic.demos episodes, written by
fibpolicy.data.robomimic_demos; command line fibpolicy.record_robomimic_demos), read back by robomimic
itself, and the replay checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("robosuite")
pytest.importorskip("robomimic")
h5py = pytest.importorskip("h5py")

from envs.robomimic import env_meta_from_dataset  # noqa: E402
from envs.robomimic._backend import import_robomimic  # noqa: E402
from envs.robomimic.demos import ABS_ACTION_KEY, check_file, load_demo  # noqa: E402
from fibpolicy.record_robomimic_demos import main  # noqa: E402
from conftest import record_lift_demos  # noqa: E402

CAMERA = 32  # small images keep the test fast; the layout does not depend on the size


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("rm") / "lift.hdf5"
    summary = record_lift_demos(path, episodes=2, seed_start=1000, camera_size=CAMERA)
    return path, summary


def test_layout_matches_robomimic(lift_file):
    path, summary = lift_file
    assert summary["episodes_written"] == 2 and summary["success_rate"] == 1.0
    assert not list(path.parent.glob(".lift.hdf5.tmp-*")), "temporary file left behind"
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert sorted(data.keys()) == ["demo_0", "demo_1"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift" and env_args["type"] == 1 and "env_kwargs" in env_args
        assert env_args["env_version"] == "1.4.1"
        assert env_args["env_kwargs"]["camera_names"] == ["agentview", "robot0_eye_in_hand"]
        total = 0
        for name in ("demo_0", "demo_1"):
            g = data[name]
            n = int(g.attrs["num_samples"])
            total += n
            assert "<mujoco" in g.attrs["model_file"]
            assert g["states"].shape == (n, 32) and g["actions"].shape == (n, 7)
            assert g[ABS_ACTION_KEY].shape == (n, 7)
            assert np.abs(g["actions"][()]).max() <= 1.0
            assert g["rewards"].shape == (n,) and g["dones"].shape == (n,)
            assert g["dones"][-1] == 1 and g["rewards"][-1] == 1.0
            for group in ("obs", "next_obs"):
                img = g[f"{group}/agentview_image"]
                assert img.shape == (n, CAMERA, CAMERA, 3) and img.dtype == np.uint8
                assert g[f"{group}/robot0_eye_in_hand_image"].shape == (n, CAMERA, CAMERA, 3)
                assert g[f"{group}/object"].shape == (n, 10)
            # obs[t + 1] == next_obs[t]
            np.testing.assert_array_equal(g["obs/robot0_eef_pos"][1:], g["next_obs/robot0_eef_pos"][:-1])
            np.testing.assert_array_equal(g["obs/agentview_image"][1:], g["next_obs/agentview_image"][:-1])
        assert int(data.attrs["total"]) == total == summary["frames"]
        train = [s.decode() for s in f["mask/train"][()]]
        valid = [s.decode() for s in f["mask/valid"][()]]
        assert sorted(train + valid) == ["demo_0", "demo_1"]


def test_robomimic_reads_the_file(lift_file):
    path, _ = lift_file
    mods = import_robomimic()
    meta = mods["FileUtils"].get_env_metadata_from_dataset(dataset_path=str(path))
    assert meta["env_name"] == "Lift"
    env = mods["EnvUtils"].create_env_from_metadata(env_meta=meta, render=False, render_offscreen=False, use_image_obs=False)
    assert env.name == "Lift"
    env.env.close()

    from robomimic.utils.dataset import SequenceDataset

    obs_keys = ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
    mods["ObsUtils"].initialize_obs_utils_with_obs_specs(
        {"obs": {"rgb": list(obs_keys[:2]), "low_dim": list(obs_keys[2:])}}
    )
    ds = SequenceDataset(
        hdf5_path=str(path),
        obs_keys=obs_keys,
        dataset_keys=("actions", "rewards", "dones"),
        load_next_obs=False,
        frame_stack=1,
        seq_length=4,
        pad_frame_stack=True,
        pad_seq_length=True,
        get_pad_mask=False,
        goal_mode=None,
        hdf5_cache_mode=None,
        hdf5_use_swmr=True,
        hdf5_normalize_obs=False,
        filter_by_attribute=None,
    )
    with h5py.File(path, "r") as f:
        n = int(f["data"].attrs["total"])
    assert len(ds) == n
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["actions"].shape == (4, 7)
        assert item["obs"]["agentview_image"].shape[-3:] in ((CAMERA, CAMERA, 3), (3, CAMERA, CAMERA))
    ds.close_and_delete_hdf5_handle()


def test_replay_checks_reproduce_success(lift_file):
    path, _ = lift_file
    results = check_file(path, demos=2)
    assert set(results) == {"demo_0", "demo_1"}
    for name, r in results.items():
        assert r["states"]["success"], name
        assert r["delta"]["success"], (name, r["delta"])
        assert r["delta"]["max_state_error"] < 1e-6, (name, r["delta"])  # deterministic simulator
        assert r["abs"]["success"], (name, r["abs"])


def test_abs_actions_are_the_controller_goal(lift_file):
    path, _ = lift_file
    demo = load_demo(path, 0)
    states, abs_a = demo["states"], demo[ABS_ACTION_KEY]
    # Position target = grip_site position + 0.05 m * clipped delta; rot vector near pi (gripper down).
    from envs.robomimic import RobomimicEnv

    env = RobomimicEnv("lift", use_image_obs=False)
    try:
        env.reset(options={"model": demo["model_file"], "state": states[0]})
        site = np.array(env.sim.data.site_xpos[env.robot.eef_site_id])
    finally:
        env.close()
    np.testing.assert_allclose(abs_a[0, :3], site + 0.05 * demo["actions"][0, :3], atol=1e-6)
    np.testing.assert_array_equal(abs_a[:, 6], demo["actions"][:, 6])
    assert np.all(np.linalg.norm(abs_a[:, 3:6], axis=1) > 2.5)


def test_refuses_to_overwrite_and_cli_errors(lift_file, tmp_path, capsys):
    path, _ = lift_file
    with pytest.raises(FileExistsError, match=str(path.name)):
        record_lift_demos(path, episodes=1)
    rc = main(["--task", "lift", "--out", str(path), "--episodes", "1"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = main(["--task", "stack", "--out", str(tmp_path / "x.hdf5"), "--episodes", "1"])
    assert rc == 2 and "'stack'" in capsys.readouterr().err
    assert not (tmp_path / "x.hdf5").exists()


def test_missing_env_args_and_demo_keys_are_named(lift_file, tmp_path):
    path, _ = lift_file
    broken = tmp_path / "broken.hdf5"
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        del f["data"].attrs["env_args"]
        del f["data/demo_1/states"]
    with pytest.raises(KeyError, match=r"broken\.hdf5.*env_args"):
        env_meta_from_dataset(broken)
    with pytest.raises(KeyError, match=r"broken\.hdf5.*env_args"):
        check_file(broken)
    with pytest.raises(KeyError, match=r"broken\.hdf5.*demo_7"):
        load_demo(broken, 7)
    with pytest.raises(KeyError, match=r"broken\.hdf5.*data/demo_1.*'states'"):
        load_demo(broken, "demo_1")
