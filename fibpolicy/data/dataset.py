"""Base torch ``Dataset`` of action-chunk windows: replay buffer + episode split + edge-padded sampler."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .normalizer import LinearNormalizer
from .replay_buffer import ReplayBuffer
from .sampler import SequenceSampler, split_episodes

__all__ = ["SequenceDataset"]


class SequenceDataset(Dataset):
    """Windows of ``horizon`` steps from the training episodes; ``get_validation_dataset()`` gives the held-out ones.

    Padding follows the reference: ``pad_before = n_obs_steps - 1``, ``pad_after = n_action_steps - 1``.
    Observation keys (``obs_keys``, raw buffer names) are read only for the first ``n_obs_steps`` positions
    unless ``load_full_obs``. Subclasses implement ``_to_sample(window) -> dict`` and ``get_normalizer``.
    """

    def __init__(
        self,
        replay_buffer: ReplayBuffer,
        *,
        keys: Iterable[str],
        obs_keys: Iterable[str],
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        max_train_episodes: int | None = None,
        seed: int = 42,
        load_full_obs: bool = False,
    ) -> None:
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps must be <= horizon: {n_obs_steps} - 1 + {n_action_steps} > {horizon}"
            )
        self.replay_buffer = replay_buffer
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.pad_before = self.n_obs_steps - 1
        self.pad_after = self.n_action_steps - 1
        self.seed = seed
        self.val_ratio = val_ratio
        self.max_train_episodes = max_train_episodes
        self.load_full_obs = load_full_obs
        self._keys = list(keys)
        self._first_k = {} if load_full_obs else {k: self.n_obs_steps for k in obs_keys}
        self.train_mask, self.val_mask = split_episodes(
            replay_buffer.n_episodes, val_ratio=val_ratio, max_train_episodes=max_train_episodes, seed=seed
        )
        self.episode_mask = self.train_mask
        self.sampler = self._make_sampler(self.episode_mask)

    def _make_sampler(self, episode_mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(
            self.replay_buffer, self.horizon, pad_before=self.pad_before, pad_after=self.pad_after,
            keys=self._keys, key_first_k=self._first_k, episode_mask=episode_mask,
        )

    @property
    def split(self) -> str:
        return "val" if self.episode_mask is self.val_mask else "train"

    @property
    def n_episodes(self) -> int:
        """Episodes this dataset draws windows from."""
        return int(self.episode_mask.sum())

    def get_validation_dataset(self) -> "SequenceDataset":
        """Same data and settings over the held-out episodes (empty when ``val_ratio`` is 0)."""
        val = copy.copy(self)
        val.episode_mask = self.val_mask
        val.sampler = self._make_sampler(self.val_mask)
        return val

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._to_sample(self.sampler.sample_sequence(index))

    def _to_sample(self, window: Mapping[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def get_normalizer(self, mode: str = "limits", fit_on: str = "train") -> LinearNormalizer:
        raise NotImplementedError

    def _fit_mask(self, fit_on: str) -> np.ndarray:
        """Episodes the normaliser is fitted on: ``"train"`` (our default) or ``"all"`` (what the reference code does)."""
        if fit_on == "train":
            return self.train_mask
        if fit_on == "all":
            return np.ones(self.replay_buffer.n_episodes, dtype=bool)
        raise ValueError(f"fit_on must be 'train' or 'all', got {fit_on!r}")

    def get_all_actions(self) -> torch.Tensor:
        """Every action of the training episodes, (N, action_dim) float32."""
        return torch.from_numpy(self.replay_buffer.gather("action", self.train_mask).astype(np.float32))
