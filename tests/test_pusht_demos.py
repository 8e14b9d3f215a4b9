"""PushT demonstrations recorded into a replay buffer: layout, round trip, replay check, prepare.py and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import zarr

from envs.pusht import PushTEnv, block_keypoints
from envs.pusht.demos import DATA_SPEC, expert_episodes, record_episode, replay_states
from fibpolicy.data import ReplayBuffer, ReplayBufferError, ensure_demos, record_demos
from fibpolicy.data.integrity import MANIFEST_ATTR

ATTRS = {"generator": "envs.pusht.demos", "env": "fibpolicy/PushT-v0", "legacy": True}


def generate_demos(out, episodes, seed_start=0, workers=1, max_steps=300, **kwargs):
    source = partial(expert_episodes, episodes=episodes, seed_start=seed_start, workers=workers, max_steps=max_steps)
    return record_demos(out, source, total=episodes, attrs=ATTRS, **kwargs)


def load_episode(path, index):
    buffer = ReplayBuffer.open(path)
    ep = buffer.get_episode(index)
    ep["seed"] = int(zarr.open_group(str(path), mode="r")["meta/episode_seeds"][index])
    return ep


@pytest.fixture(scope="module")
def short_buffer(tmp_path_factory):
    """Two short (15-step, hence unsuccessful) episodes from seeds 3 and 4, kept with keep_failed."""
    out = tmp_path_factory.mktemp("demos") / "short.zarr"
    summary = generate_demos(out, episodes=2, seed_start=3, keep_failed=True, progress=False, max_steps=15)
    return out, summary


def test_layout_is_the_public_replay_buffer(short_buffer):
    out, summary = short_buffer
    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == 2
    assert json.loads((out / "data" / "img" / ".zarray").read_text())["zarr_format"] == 2
    n = summary["frames"]
    assert n == 30 and summary["episodes_written"] == 2
    shapes = {"img": (n, 96, 96, 3), "state": (n, 5), "action": (n, 2), "keypoint": (n, 9, 2), "n_contacts": (n, 1)}
    for name, shape in shapes.items():
        arr = root[f"data/{name}"]
        assert arr.shape == shape
        assert arr.dtype == DATA_SPEC[name][1]
    assert root["data/img"].chunks == (1, 96, 96, 3)
    attrs = dict(root.attrs)
    manifest = attrs.pop(MANIFEST_ATTR)
    assert attrs == ATTRS
    assert manifest["arrays"]["data/img"] == {"shape": [n, 96, 96, 3], "dtype": "uint8", "nchunks": n}
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [15, 30])
    assert root["meta/episode_ends"].dtype == np.int64
    np.testing.assert_array_equal(root["meta/episode_seeds"][:], [3, 4])
    assert root["meta/episode_seeds"].dtype == np.int64
    np.testing.assert_array_equal(root["meta/episode_success"][:], [False, False])
    assert not list(out.parent.glob(".short.zarr.*"))  # the temporary store was renamed


def test_rows_are_observation_before_action(short_buffer):
    out, _ = short_buffer
    ep = load_episode(out, 1)
    assert ep["seed"] == 4
    env = PushTEnv(obs_type="state")
    _, info = env.reset(seed=4)
    for t in range(3):
        np.testing.assert_array_equal(ep["img"][t], env.observation_image())
        np.testing.assert_allclose(ep["state"][t], np.r_[info["agent_pos"], info["block_pose"]], rtol=1e-6)
        np.testing.assert_allclose(ep["keypoint"][t], block_keypoints(info["block_pose"]), rtol=1e-6)
        assert ep["n_contacts"][t, 0] == info["n_contacts"]
        _, _, _, _, info = env.step(ep["action"][t].astype(np.float64))


def test_replaying_stored_actions_reproduces_stored_states(short_buffer):
    out, _ = short_buffer
    for index in range(2):
        ep = load_episode(out, index)
        states = replay_states(ep["seed"], ep["action"])
        np.testing.assert_allclose(states, ep["state"], atol=1e-3, rtol=0)
        # A different seed does not reproduce them: the check has teeth.
        assert not np.allclose(replay_states(ep["seed"] + 10, ep["action"]), ep["state"], atol=1e-3)


def test_failed_episodes_are_dropped_by_default(tmp_path):
    with pytest.raises(ReplayBufferError, match="none of the 1 episodes succeeded"):
        generate_demos(tmp_path / "none.zarr", episodes=1, seed_start=0, progress=False, max_steps=3)
    assert not (tmp_path / "none.zarr").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "demo.zarr"
    generate_demos(out, episodes=1, seed_start=0, keep_failed=True, progress=False, max_steps=2)
    with pytest.raises(FileExistsError, match="demo.zarr"):
        generate_demos(out, episodes=1, seed_start=1, keep_failed=True, progress=False, max_steps=2)
    summary = generate_demos(
        out, episodes=1, seed_start=1, keep_failed=True, progress=False, max_steps=2, overwrite=True
    )
    assert summary["episodes_written"] == 1
    assert zarr.open_group(str(out), mode="r")["meta/episode_seeds"][0] == 1


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        generate_demos(tmp_path / "a.zarr", episodes=0, progress=False)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate_demos(tmp_path / "a.zarr", episodes=1, workers=0, progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_ensure_demos_records_once_and_reuses_the_store(tmp_path):
    out = tmp_path / "cached.zarr"
    calls = []

    def source():
        calls.append(1)
        return expert_episodes(episodes=1, seed_start=2, workers=1, max_steps=4)

    assert ensure_demos(out, source, keep_failed=True, progress=False) == out and len(calls) == 1
    assert ensure_demos(out, source, keep_failed=True, progress=False) == out and len(calls) == 1  # reused


def test_prepare_entry_point_records_the_tasks_store(tmp_path):
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "prepare.py"), f"data_dir={tmp_path}", "task.prepare.source.episodes=1",
           "+task.prepare.progress=false"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    buffer = ReplayBuffer.open(tmp_path / "pusht_expert_200.zarr")
    assert buffer.n_episodes == 1 and set(buffer.keys()) == set(DATA_SPEC)
    assert "data ready at" in res.stdout and "pusht_expert_200.zarr" in res.stdout


def test_worker_processes_give_the_same_buffer(tmp_path):
    a = generate_demos(tmp_path / "a.zarr", episodes=2, seed_start=5, keep_failed=True, progress=False, max_steps=6)
    b = generate_demos(
        tmp_path / "b.zarr", episodes=2, seed_start=5, keep_failed=True, progress=False, max_steps=6, workers=2
    )
    assert a["frames"] == b["frames"] == 12
    ra, rb = zarr.open_group(str(tmp_path / "a.zarr"), mode="r"), zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    for name in DATA_SPEC:
        np.testing.assert_array_equal(ra[f"data/{name}"][:], rb[f"data/{name}"][:])


def test_successful_expert_episode_ends_at_success():
    ep = record_episode(seed=1)
    assert ep.success
    env = PushTEnv(obs_type="state")
    env.reset(seed=1)
    for t, action in enumerate(ep.data["action"]):
        _, _, terminated, _, _ = env.step(action.astype(np.float64))
        assert terminated == (t == ep.length - 1)  # the success state itself is not stored
