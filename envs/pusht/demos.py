"""PushT demonstrations from the scripted expert, as a stream of episodes in the public replay-buffer layout.

``expert_episodes(episodes=200, seed_start=0, workers=None)`` yields one dict per episode::

    {"data": {"img", "state", "action", "keypoint", "n_contacts"}, "meta": {"seeds": seed, "success": bool}}

with the arrays of ``pusht_cchi_v7_replay.zarr``: ``img`` uint8 (T, 96, 96, 3); ``state`` float32 (T, 5)
``[agent_x, agent_y, block_x, block_y, block_angle]`` (raw pymunk angle, as the reference's recorder
stores it); ``action`` float32 (T, 2); ``keypoint`` float32 (T, 9, 2); ``n_contacts`` float32 (T, 1).
A replay-buffer writer stores the meta as ``meta/episode_seeds`` and ``meta/episode_success``
(``fibpolicy.data.ensure_demos`` does, and ``python prepare.py`` runs it for a task).

Row t of an episode holds the observation *before* action t and action t itself, as in the public
dataset; the state reached by the last action (the success) is not stored. Episodes come in seed
order. Replaying an episode's actions from its seed (legacy reset) reproduces its states.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from envs.parallel import ordered_map
from envs.pusht.env import MAX_EPISODE_STEPS, PushTEnv
from envs.pusht.expert import ExpertConfig, PushTExpert
from envs.pusht.keypoints import N_BLOCK_KEYPOINTS, block_keypoints

IMG_SIZE = 96
# Array name -> per-step shape and dtype.
DATA_SPEC = {
    "img": ((IMG_SIZE, IMG_SIZE, 3), np.uint8),
    "state": ((5,), np.float32),
    "action": ((2,), np.float32),
    "keypoint": ((N_BLOCK_KEYPOINTS, 2), np.float32),
    "n_contacts": ((1,), np.float32),
}


# Recorded with each store (see fibpolicy.data.recording): bump it when the expert, the env or what an
# episode records changes, so that a cached store made by the old code is not mistaken for a new one.
RECIPE_VERSION = 1


@dataclass
class Episode:
    """One recorded expert episode."""

    seed: int
    success: bool
    data: dict[str, np.ndarray]

    @property
    def length(self) -> int:
        """Number of (observation, action) rows."""
        return len(self.data["action"])


def record_episode(seed: int, max_steps: int = MAX_EPISODE_STEPS, config: ExpertConfig | None = None) -> Episode:
    """Run the expert from ``seed`` and record (observation, action) rows until success or ``max_steps``."""
    env = PushTEnv(obs_type="state", render_size=IMG_SIZE)
    expert = PushTExpert(config)
    _, info = env.reset(seed=seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in DATA_SPEC}
    success = False
    for _ in range(max_steps):
        sim = env.sim
        # Round the action to float32 before stepping, so stored actions replay exactly.
        action = expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"]).astype(np.float32)
        rows["img"].append(env.observation_image())
        rows["state"].append(sim.state().astype(np.float32))
        rows["action"].append(action)
        rows["keypoint"].append(block_keypoints(sim.block_pose).astype(np.float32))
        rows["n_contacts"].append(np.array([info["n_contacts"]], dtype=np.float32))
        _, _, terminated, _, info = env.step(action.astype(np.float64))
        if terminated:
            success = True
            break
    data = {k: np.stack(v).astype(DATA_SPEC[k][1]) for k, v in rows.items()}
    return Episode(seed=seed, success=success, data=data)


def replay_states(seed: int, actions: np.ndarray) -> np.ndarray:
    """States ``[ax, ay, bx, by, angle]`` seen before each action when replaying ``actions`` from ``seed``."""
    env = PushTEnv(obs_type="state")
    env.reset(seed=seed)
    states = []
    for action in np.asarray(actions):
        states.append(env.sim.state())
        env.step(np.asarray(action, dtype=np.float64))
    return np.array(states).reshape(-1, 5)


def _record_task(args: tuple[int, int, ExpertConfig | None]) -> Episode:
    return record_episode(*args)


def _episodes(seeds: list[int], max_steps: int, workers: int, config: ExpertConfig | None) -> Iterator[Episode]:
    """Recorded episodes in seed order, from ``workers`` processes (or inline for one worker)."""
    return ordered_map(_record_task, [(s, max_steps, config) for s in seeds], workers)


def expert_episodes(
    episodes: int = 200,
    seed_start: int = 0,
    workers: int | None = None,
    max_steps: int = MAX_EPISODE_STEPS,
    config: ExpertConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Expert episodes from seeds ``seed_start, ...`` (``episodes`` of them), in seed order.

    Every episode is yielded, successful or not (its ``success`` says which; the writer decides).
    ``workers`` processes record in parallel (default: the machine's cores, at most ``episodes``).
    """
    if episodes < 1:
        raise ValueError(f"expert_episodes: episodes must be >= 1, got {episodes}")
    workers = min(os.cpu_count() or 1, episodes) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"expert_episodes: workers must be >= 1 (or None for the machine's cores), got {workers}")
    if max_steps < 1:
        raise ValueError(f"expert_episodes: max_steps must be >= 1, got {max_steps}")
    for ep in _episodes(list(range(seed_start, seed_start + episodes)), max_steps, workers, config):
        yield {"data": ep.data, "meta": {"seeds": ep.seed, "success": ep.success}, "success": ep.success}
