"""The one sequence dataset of policy tasks: a zarr replay buffer read through the task's ``shape_meta``.

Samples are ``{"obs": {key: (To, *shape)}, "action": (horizon, action_dim)}`` float32 tensors in env
units (images (C, H, W) in [0, 1]); the policy normalises them with the normaliser this dataset fits.
The time window (``horizon``, ``n_obs_steps``, ``n_action_steps``) belongs to the policy, which hands it
to the dataset; padding follows the reference: ``pad_before = n_obs_steps - 1``,
``pad_after = n_action_steps - 1`` (edge values repeated).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..policy.normalizer import LinearNormalizer
from ..shape_meta import ShapeMeta
from .replay_buffer import ArraySpec, ReplayBuffer, ReplayBufferError
from .sampler import SequenceSampler, split_episodes

__all__ = ["SequenceDataset"]

FIT_ON = ("train", "all")


class SequenceDataset(Dataset):
    """Windows of ``horizon`` steps from the training episodes; ``get_validation_dataset()`` gives the held-out ones.

    ``shape_meta`` (a dict or ``ShapeMeta``) says which store keys to read and how to turn them into
    observations and actions. Observation store keys are read only for the first ``n_obs_steps``
    positions of a window unless ``load_full_obs``. ``fit_on`` picks the episodes the normaliser is fitted
    on: ``"train"`` (default) or ``"all"`` (what the reference code does).
    """

    def __init__(
        self,
        zarr_path: str | os.PathLike,
        shape_meta: Mapping[str, Any] | ShapeMeta,
        *,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        val_ratio: float = 0.02,
        max_train_episodes: int | None = None,
        seed: int = 42,
        in_memory: bool = True,
        load_full_obs: bool = False,
        fit_on: str = "train",
    ) -> None:
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps must be <= horizon: {n_obs_steps} - 1 + {n_action_steps} > {horizon}"
            )
        if fit_on not in FIT_ON:
            raise ValueError(f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
        self.zarr_path = Path(zarr_path)
        if not self.zarr_path.exists():
            raise FileNotFoundError(
                f"dataset {self.zarr_path} does not exist (a zarr replay buffer: data/<key> arrays and "
                "meta/episode_ends); name an existing store, or keep the task's prepare step to generate it"
            )
        self.shape_meta = ShapeMeta(shape_meta)
        keys = self.shape_meta.store_keys()
        specs = {
            spec.source.key: ArraySpec((spec.shape[1], spec.shape[2], spec.shape[0]), "uint8",
                                       f"(n, {spec.shape[1]}, {spec.shape[2]}, {spec.shape[0]}) uint8 images for obs {name!r}")
            for name, spec in self.shape_meta.obs.items() if spec.type == "rgb"
        }
        self.replay_buffer = ReplayBuffer.open(self.zarr_path, keys=keys, in_memory=in_memory, specs=specs)
        self._check_contract()

        self.horizon, self.n_obs_steps, self.n_action_steps = int(horizon), int(n_obs_steps), int(n_action_steps)
        self.pad_before, self.pad_after = self.n_obs_steps - 1, self.n_action_steps - 1
        self.seed, self.val_ratio, self.max_train_episodes = seed, val_ratio, max_train_episodes
        self.load_full_obs, self.fit_on = load_full_obs, fit_on
        self._keys = keys
        # A store key that also feeds the action is needed over the whole horizon.
        obs_only = [k for k in self.shape_meta.obs_store_keys() if k != self.shape_meta.action.source.key]
        self._first_k = {} if load_full_obs else {k: self.n_obs_steps for k in obs_only}
        self.train_mask, self.val_mask = split_episodes(
            self.replay_buffer.n_episodes, val_ratio=val_ratio, max_train_episodes=max_train_episodes, seed=seed
        )
        self.episode_mask = self.train_mask
        self.sampler = self._make_sampler(self.episode_mask)

    def _check_contract(self) -> None:
        """Extract the first step of every declared key, so a wrong source or shape fails here, naming the file."""
        first = {k: np.asarray(self.replay_buffer[k][:1]) for k in self.shape_meta.store_keys()}
        try:
            self.shape_meta.extract_obs(first)
            self.shape_meta.extract_action(first)
        except (KeyError, ValueError) as err:
            message = err.args[0] if err.args else str(err)
            raise ReplayBufferError(f"{self.zarr_path}: {message}") from None

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
        window = self.sampler.sample_sequence(index)
        obs = self.shape_meta.extract_obs(window)
        return {
            "obs": {k: torch.from_numpy(v) for k, v in obs.items()},
            "action": torch.from_numpy(self.shape_meta.extract_action(window)),
        }

    def get_normalizer(self) -> LinearNormalizer:
        """Every observation key and the action, each fitted with its ``norm`` mode on the ``fit_on`` episodes."""
        mask = self.train_mask if self.fit_on == "train" else np.ones(self.replay_buffer.n_episodes, dtype=bool)
        data, modes = {}, {}
        for name, spec in [*self.shape_meta.obs.items(), ("action", self.shape_meta.action)]:
            modes[name] = spec.norm_mode
            if spec.type == "rgb":  # image / identity: one broadcast field, no statistics needed
                data[name] = np.zeros((1, 1), np.float32)
            else:
                data[name] = spec.extract(self.replay_buffer.gather(spec.source.key, mask), lead=1).reshape(-1, spec.dim)
        return LinearNormalizer().fit(data, mode=modes)
