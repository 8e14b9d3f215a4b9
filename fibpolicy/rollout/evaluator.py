"""The rollout evaluator a policy task config declares: env factory + env-to-store key mapping + protocol.

The evaluator turns env observations into policy inputs through the task's ``shape_meta``, the same
declaration the dataset reads the store with, plus ``obs_map``: for each store key the shape_meta reads,
where it comes from in the env observation (a key of a dict observation, or ``obs`` for an array one,
optionally sliced along the flattened feature axis). For PushT from images::

    obs_map: {img: pixels, state: agent_pos}          # shape_meta's agent_pos reads state[:2]

and from keypoints (the env gives one 40-d vector)::

    obs_map: {keypoint: "obs[:18]", state: "obs[18:20]"}

Without ``obs_map`` the env's observation keys are the store keys (robomimic: both are robomimic's names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from ..atomic import write_json
from ..shape_meta import ShapeMeta, Source
from .runner import RolloutRunner, protocol_episodes

__all__ = ["RolloutEvaluator", "map_env_obs"]


def map_env_obs(obs: Any, obs_map: Mapping[str, Source]) -> dict[str, np.ndarray]:
    """A batch of env observations (dict or array, leading env axis) -> arrays by store key."""
    out = {}
    for store_key, source in obs_map.items():
        if isinstance(obs, Mapping):
            if source.key not in obs:
                raise KeyError(f"obs_map {store_key}: {source}: the env observation has no key {source.key!r} "
                               f"(it has {sorted(obs)})")
            value = obs[source.key]
        elif source.key == "obs":
            value = obs
        else:
            raise KeyError(f"obs_map {store_key}: {source}: the env observation is an array; name it 'obs'")
        out[store_key] = source.take(value, lead=1) if source.sliced else np.asarray(value)
    return out


class RolloutEvaluator:
    """The reference protocol as a trainer evaluator: ``evaluator(policy, epoch, run_dir) -> metrics``.

    ``env``: a zero-argument env factory (a config gives a ``_partial_`` of the env class). Train
    episodes reset from seeds ``train_seed_start, ...``, test episodes from ``test_seed_start, ...``; an
    episode's score is its maximum reward and it succeeds when ``info["is_success"]`` is ever true.
    Sampling noise is seeded with ``seed`` at the start of every run, so re-scoring a checkpoint with
    ``eval.py`` reproduces the score the training run logged for it (the trainer evaluates under a
    forked RNG, so this does not touch the training stream). ``vector_env``: ``"async"`` (one subprocess
    per env) or ``"sync"`` (all ``n_envs`` in this process; see ``RolloutRunner``).
    ``train_reset_options``: one reset-options dict per train episode (robomimic: the first states of
    demos 0-5) instead of seeds. ``action_map``: policy actions -> env actions (robomimic: rotation-6d
    -> axis-angle, ``fibpolicy.rotation.rot6d_action_to_abs``). ``keep_workers``: subprocess envs live
    from one evaluation to the next (``close()`` ends them) instead of being started for each.
    """

    def __init__(
        self,
        env: Callable[[], gym.Env],
        shape_meta: Mapping[str, Any] | ShapeMeta,
        obs_map: Mapping[str, str] | None = None,
        n_train: int = 6,
        n_test: int = 50,
        train_seed_start: int = 0,
        test_seed_start: int = 100000,
        n_envs: int = 8,
        vector_env: str = "async",
        max_steps: int = 300,
        n_train_videos: int = 1,
        n_test_videos: int = 2,
        fps: int = 10,
        seed: int = 0,
        progress: bool = True,
        train_reset_options: Sequence[Mapping[str, Any]] | None = None,
        action_map: Callable[[np.ndarray], np.ndarray] | None = None,
        keep_workers: bool = False,
    ) -> None:
        if not callable(env):
            raise TypeError(f"env must be a zero-argument env factory, got {type(env).__name__}")
        if action_map is not None and not callable(action_map):
            raise TypeError(f"action_map must be a function of the policy's actions, got {type(action_map).__name__}")
        self.env_fn = env
        self.shape_meta = ShapeMeta(shape_meta)
        if obs_map is None:  # the env's observation keys are the store keys
            obs_map = {k: k for k in self.shape_meta.obs_store_keys()}
        self.obs_map = {str(k): Source.parse(v, where=f"obs_map {k}") for k, v in obs_map.items()}
        missing = [k for k in self.shape_meta.obs_store_keys() if k not in self.obs_map]
        if missing:
            raise ValueError(f"obs_map has no entry for store keys {missing} that shape_meta reads "
                             f"(it maps {sorted(self.obs_map)})")
        self.episodes = protocol_episodes(
            n_train, n_test, train_seed_start=train_seed_start, test_seed_start=test_seed_start,
            n_train_videos=n_train_videos, n_test_videos=n_test_videos, train_options=train_reset_options,
        )
        self.runner_kwargs = dict(n_envs=n_envs, vector_env=vector_env, max_steps=max_steps, fps=fps, progress=progress,
                                  action_map=action_map, keep_workers=keep_workers)
        self._runner: RolloutRunner | None = None
        self.seed = int(seed)

    def policy_obs(self, obs: Any) -> dict[str, np.ndarray]:
        """A batch of env observations -> the policy's observations (B, ...), as a dataset sample gives them."""
        return self.shape_meta.extract_obs(map_env_obs(obs, self.obs_map), lead=1)

    def run(self, policy: Any, video_dir: Path | None, tag: str = "") -> dict[str, Any]:
        """Roll out ``policy`` on every protocol episode; returns metrics and per-episode results."""
        if self._runner is None:
            self._runner = RolloutRunner(self.env_fn, self.episodes, obs_transform=self.policy_obs, **self.runner_kwargs)
        self._runner.video_dir = Path(video_dir) if video_dir is not None else None
        torch.manual_seed(self.seed)
        return self._runner.run(policy, tag=tag).to_dict()

    def close(self) -> None:
        """End the env workers kept between evaluations (``keep_workers``)."""
        if self._runner is not None:
            self._runner.close()

    def __call__(self, policy: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any]:
        """Trainer hook: evaluate, keep the per-episode record, return the scalar metrics."""
        result = self.run(policy, Path(run_dir) / "videos", tag=f"epoch{epoch:04d}_")
        write_json(Path(run_dir) / "eval" / f"epoch{epoch:04d}.json", result)
        failed = [e for e in result["episodes"] if e["error"]]
        if failed:
            print(f"[fibpolicy] warning: {len(failed)} of {len(result['episodes'])} episodes failed at epoch {epoch} "
                  f"(seed {failed[0]['seed']}: {failed[0]['error'][:300]})", flush=True)
        metrics = {k: v for k, v in result.items() if k not in ("episodes", "seconds", "timing", "memory")}
        return {**metrics, "eval/seconds": result["seconds"],
                **{f"eval/{k}": v for k, v in (*result["timing"].items(), *result["memory"].items())}}
