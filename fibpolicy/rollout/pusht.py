"""PushT evaluation: environment factory, env-to-policy observation mapping, the evaluator callback."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from envs.pusht import PushTEnv

from .runner import RolloutRunner, protocol_episodes

# Env observation type each policy observation layout needs.
ENV_OBS_TYPES = {"image": "pixels_agent_pos", "lowdim": "keypoints"}


def image_obs(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Env ``pixels`` / ``agent_pos`` -> the image policy's ``image`` / ``agent_pos`` (B, To, ...)."""
    return {"image": obs["pixels"], "agent_pos": obs["agent_pos"].astype(np.float32)}


def lowdim_obs(obs: np.ndarray) -> dict[str, np.ndarray]:
    """Env keypoint vector (9 block keypoints, agent, visibility) -> ``keypoint`` (18) and ``agent_pos`` (2)."""
    obs = obs.astype(np.float32)
    return {"keypoint": obs[..., :18], "agent_pos": obs[..., 18:20]}


OBS_TRANSFORMS = {"image": image_obs, "lowdim": lowdim_obs}


class PushTEvaluator:
    """The reference PushT protocol as a trainer evaluator: ``evaluator(policy, epoch, run_dir) -> metrics``."""

    def __init__(
        self,
        obs: str = "image",
        n_train: int = 6,
        n_test: int = 50,
        train_seed_start: int = 0,
        test_seed_start: int = 100000,
        n_envs: int = 8,
        max_steps: int = 300,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        n_train_videos: int = 1,
        n_test_videos: int = 2,
        video_size: int = 256,
        fps: int = 10,
        legacy: bool = True,
        progress: bool = True,
    ) -> None:
        if obs not in OBS_TRANSFORMS:
            raise ValueError(f"obs must be one of {sorted(OBS_TRANSFORMS)}, got {obs!r}")
        self.obs = obs
        self.episodes = protocol_episodes(
            n_train, n_test, train_seed_start=train_seed_start, test_seed_start=test_seed_start,
            n_train_videos=n_train_videos, n_test_videos=n_test_videos,
        )
        self.env_fn = partial(
            PushTEnv, obs_type=ENV_OBS_TYPES[obs], render_mode="rgb_array", video_size=video_size, legacy=legacy
        )
        self.runner_kwargs = dict(
            n_envs=n_envs, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, max_steps=max_steps,
            fps=fps, progress=progress,
        )

    def run(self, policy: Any, video_dir: Path | None, tag: str = "") -> dict[str, Any]:
        """Roll out ``policy`` on every protocol episode; returns metrics and per-episode results."""
        runner = RolloutRunner(
            self.env_fn, self.episodes, obs_transform=OBS_TRANSFORMS[self.obs], video_dir=video_dir, **self.runner_kwargs
        )
        return runner.run(policy, tag=tag).to_dict()

    def __call__(self, policy: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any]:
        """Trainer hook: evaluate, keep the per-episode record, return the scalar metrics."""
        result = self.run(policy, Path(run_dir) / "videos", tag=f"epoch{epoch:04d}_")
        record = Path(run_dir) / "eval" / f"epoch{epoch:04d}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(record)
        return {k: v for k, v in result.items() if k != "episodes"}
