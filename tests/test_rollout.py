"""The vectorised rollout runner against a hand-run rollout, its videos, and a crashing worker."""

import os
from collections import deque
from functools import partial

import numpy as np
import pytest
import torch

from envs.pusht import PushTEnv
from fibpolicy.rollout import EpisodeSpec, RolloutRunner, protocol_episodes
from fibpolicy.data import read_mp4


class DriftPolicy:
    """Deterministic: each chunk steps from the latest agent position towards (256, 256); 8 actions a chunk."""

    def predict_action(self, obs):
        pos = obs["agent_pos"][:, -1].double()  # (B, 2) latest observation
        steps = torch.arange(1, 9, dtype=torch.float64)[None, :, None]
        return {"action": pos[:, None, :] + 6.0 * steps * torch.sign(256.0 - pos)[:, None, :]}

    def reset(self):
        self.queue = []

    def select_action(self, obs):
        if not self.queue:
            self.queue = list(self.predict_action({"agent_pos": obs["agent_pos"][:, None]})["action"].unbind(1))
        return self.queue.pop(0)


def identity(obs):
    return {"agent_pos": obs["agent_pos"]}


def _manual(seed, max_steps, n_obs=2, n_act=8):
    env = PushTEnv(obs_type="pixels_agent_pos")
    obs, _ = env.reset(seed=seed)
    history = deque([obs] * n_obs, maxlen=n_obs)
    policy, best, steps = DriftPolicy(), 0.0, 0
    while steps < max_steps:
        agent = torch.as_tensor(np.stack([h["agent_pos"] for h in history])[None])
        actions = policy.predict_action({"agent_pos": agent})["action"][0].numpy()
        for a in actions[:n_act]:
            if steps >= max_steps:
                break
            obs, reward, terminated, _, _ = env.step(a)
            history.append(obs)
            steps += 1
            best = max(best, reward)
            if terminated:
                return best, steps
    return best, steps


@pytest.mark.parametrize("vector_env, n_envs", [("async", 2), ("sync", 2), ("sync", 3)])
def test_runner_matches_a_hand_run_rollout_and_films(tmp_path, vector_env, n_envs):
    episodes = [EpisodeSpec(3, "train", record_video=True), EpisodeSpec(100000, "test"), EpisodeSpec(100001, "test")]
    runner = RolloutRunner(
        partial(PushTEnv, obs_type="pixels_agent_pos", render_mode="rgb_array"), episodes,
        obs_transform=identity, n_envs=n_envs, max_steps=20, video_dir=tmp_path, progress=False, vector_env=vector_env,
    )
    result = runner.run(DriftPolicy(), tag="e0_")
    assert set(result.timing) == {"policy_s", "env_s", "video_s"} and all(v > 0 for v in result.timing.values())
    assert sum(result.timing.values()) <= result.seconds
    for ep in result.episodes:
        score, length = _manual(ep.seed, 20)
        assert ep.error is None
        assert ep.score == pytest.approx(score) and ep.length == length
    metrics = result.metrics()
    assert metrics["test/n_episodes"] == 2 and metrics["train/n_episodes"] == 1
    assert metrics["test/mean_score"] == pytest.approx(np.mean([e.score for e in result.episodes[1:]]))
    video = result.episodes[0].video
    assert video.endswith("e0_train_seed3.mp4")
    frames = read_mp4(video)
    assert frames.shape[0] == result.episodes[0].length + 1 and frames.shape[-1] == 3
    assert result.episodes[1].video is None


class FlakyPushT(PushTEnv):
    """Fails in step for seed 13, as a broken simulator would: raising, or killing its process."""

    def __init__(self, how="raise", **kwargs):
        super().__init__(**kwargs)
        self.how = how

    def reset(self, *, seed=None, options=None):
        self._bad = seed == 13
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self._bad:
            if self.how == "exit":
                os._exit(3)
            raise RuntimeError("simulator exploded")
        return super().step(action)


@pytest.mark.parametrize("how, message", [("raise", "simulator exploded"), ("exit", "Error")])
def test_a_crashing_worker_is_reported_with_its_seed_and_the_rest_completes(how, message):
    episodes = [EpisodeSpec(s) for s in (11, 13, 17, 19)]
    runner = RolloutRunner(
        partial(FlakyPushT, how=how, obs_type="pixels_agent_pos"), episodes, obs_transform=identity,
        n_envs=2, max_steps=8, context="fork", progress=False, step_timeout_s=30,
    )
    result = runner.run(DriftPolicy())
    by_seed = {e.seed: e for e in result.episodes}
    assert message in by_seed[13].error
    assert all(by_seed[s].error is None and by_seed[s].length == 8 for s in (11, 17, 19))
    assert result.metrics()["test/n_crashed"] == 1 and result.metrics()["test/n_episodes"] == 3


def test_protocol_episodes_are_the_reference_seeds():
    eps = protocol_episodes()
    assert [e.seed for e in eps if e.prefix == "train"] == list(range(6))
    assert [e.seed for e in eps if e.prefix == "test"] == list(range(100000, 100050))
    assert sum(e.record_video for e in eps) == 3


def test_runner_argument_errors():
    with pytest.raises(ValueError, match="no episodes"):
        RolloutRunner(PushTEnv, [], obs_transform=identity)
    with pytest.raises(ValueError, match=">= 1"):
        RolloutRunner(PushTEnv, [EpisodeSpec(0)], obs_transform=identity, max_steps=0)
    with pytest.raises(ValueError, match="vector_env"):
        RolloutRunner(PushTEnv, [EpisodeSpec(0)], obs_transform=identity, vector_env="threads")


class EarlyDone(PushTEnv):
    """Terminates after 3 steps for seed 13, as a solved episode does."""

    def reset(self, *, seed=None, options=None):
        self._short, self._t = seed == 13, 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._t += 1
        return obs, reward, terminated or (self._short and self._t == 3), truncated, info


@pytest.mark.parametrize("vector_env", ["async", "sync"])
def test_an_episode_that_ends_early_stops_counting_and_the_others_run_on(vector_env):
    episodes = [EpisodeSpec(s) for s in (11, 13, 17)]
    runner = RolloutRunner(partial(EarlyDone, obs_type="pixels_agent_pos"), episodes, obs_transform=identity,
                           n_envs=3, max_steps=8, progress=False, vector_env=vector_env, context="fork")
    by_seed = {e.seed: e for e in runner.run(DriftPolicy()).episodes}
    assert all(e.error is None for e in by_seed.values())
    assert by_seed[13].length == 3 and by_seed[11].length == by_seed[17].length == 8


def test_an_in_process_env_that_raises_fails_its_round_with_the_seeds():
    episodes = [EpisodeSpec(s) for s in (11, 13, 17)]
    runner = RolloutRunner(partial(FlakyPushT, obs_type="pixels_agent_pos"), episodes, obs_transform=identity,
                           n_envs=2, max_steps=8, progress=False, vector_env="sync")
    by_seed = {e.seed: e for e in runner.run(DriftPolicy()).episodes}
    assert "simulator exploded" in by_seed[13].error and "simulator exploded" in by_seed[11].error
    assert by_seed[17].error is None and by_seed[17].length == 8


class StartsFromOptions(PushTEnv):
    """``reset(options={"agent": [x, y]})`` puts the agent there (a stored start state); seeds place it as usual."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        if options:
            obs = {**obs, "agent_pos": np.asarray(options["agent"], dtype=obs["agent_pos"].dtype)}
            self._forced = np.asarray(options["agent"], dtype=np.float64)
        else:
            self._forced = None
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self._forced is not None:  # score the start the options gave: 1 when the agent began at (50, 50)
            reward = float(np.allclose(self._forced, [50, 50]))
        return obs, reward, terminated, truncated, info


class FirstObs(DriftPolicy):
    """Records the first agent position each env showed after a reset."""

    def __init__(self):
        self.first = []

    def reset(self):
        super().reset()
        self.fresh = True

    def select_action(self, obs):
        if self.fresh:
            self.first.append(obs["agent_pos"].numpy().copy())
            self.fresh = False
        return super().select_action(obs)


@pytest.mark.parametrize("vector_env", ["async", "sync"])
def test_episodes_with_reset_options_start_from_them_and_the_others_from_their_seeds(vector_env):
    episodes = protocol_episodes(2, 2, n_train_videos=0, n_test_videos=0,
                                 train_options=[{"agent": [50.0, 50.0]}, {"agent": [400.0, 60.0]}])
    assert [e.options for e in episodes] == [{"agent": [50.0, 50.0]}, {"agent": [400.0, 60.0]}, None, None]
    runner = RolloutRunner(partial(StartsFromOptions, obs_type="pixels_agent_pos"), episodes, obs_transform=identity,
                           n_envs=3, max_steps=4, progress=False, vector_env=vector_env, context="fork")
    policy = FirstObs()
    result = runner.run(policy)
    first_round = policy.first[0]
    np.testing.assert_array_equal(first_round[0], [50, 50])
    np.testing.assert_array_equal(first_round[1], [400, 60])
    seeded, _ = PushTEnv(obs_type="pixels_agent_pos").reset(seed=100000)
    np.testing.assert_allclose(first_round[2], seeded["agent_pos"])  # the plain episode kept its seed
    scores = [e.score for e in result.episodes]
    assert scores[0] == 1.0 and scores[1] == 0.0
    with pytest.raises(ValueError, match="2 train episodes need as many reset options"):
        protocol_episodes(2, 1, train_options=[{"agent": [1, 2]}])


def test_action_map_is_applied_to_the_policy_actions():
    seen = []

    def action_map(a):
        seen.append(a.shape)
        return np.full_like(a, 256.0)

    runner = RolloutRunner(partial(PushTEnv, obs_type="pixels_agent_pos"), [EpisodeSpec(5)], obs_transform=identity,
                           n_envs=1, max_steps=3, progress=False, vector_env="sync", action_map=action_map)
    runner.run(DriftPolicy())
    assert seen == [(1, 2)] * 3


def test_kept_workers_serve_the_next_run_and_close_ends_them():
    episodes = [EpisodeSpec(s) for s in (11, 13)]
    runner = RolloutRunner(partial(PushTEnv, obs_type="pixels_agent_pos"), episodes, obs_transform=identity,
                           n_envs=2, max_steps=3, progress=False, context="fork", keep_workers=True)
    first = runner.run(DriftPolicy())
    pids = [p.pid for p in runner._venv.processes]
    assert all(p.is_alive() for p in runner._venv.processes)
    second = runner.run(DriftPolicy())
    assert [p.pid for p in runner._venv.processes] == pids  # the same workers
    assert [e.score for e in first.episodes] == [e.score for e in second.episodes]  # and the same episodes
    assert second.memory["env_uss_mb_mean"] > 0
    procs = runner._venv.processes
    runner.close()
    assert runner._venv is None and not any(p.is_alive() for p in procs)


class CountsRenders(EarlyDone):
    """EarlyDone that counts its render() calls."""

    renders = 0

    def render(self):
        self.renders += 1
        return super().render()


def test_subprocess_envs_render_only_while_filmed(tmp_path):
    # Seed 13 is filmed and ends after 3 steps, seed 17 is filmed for all 8, seed 11 is not filmed.
    episodes = [EpisodeSpec(11), EpisodeSpec(13, record_video=True), EpisodeSpec(17, record_video=True)]
    runner = RolloutRunner(partial(CountsRenders, obs_type="pixels_agent_pos", render_mode="rgb_array"), episodes,
                           obs_transform=identity, n_envs=3, max_steps=8, video_dir=tmp_path, progress=False,
                           context="fork", keep_workers=True)
    result = runner.run(DriftPolicy())
    try:
        renders = runner._venv.get_attr("renders")
    finally:
        runner.close()
    assert list(renders) == [0, 3 + 1, 8 + 1]  # the reset frame and one per step while the episode runs
    assert [len(read_mp4(e.video)) for e in result.episodes[1:]] == [4, 9]
