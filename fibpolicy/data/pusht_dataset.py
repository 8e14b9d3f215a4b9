"""PushT demonstration datasets over the reference replay-buffer layout.

Store keys (public ``pusht_cchi_v7_replay.zarr`` and our generated stores): ``data/img`` uint8 (n, 96, 96, 3),
``data/state`` (n, 5) = agent x, y, block x, y, angle, ``data/keypoint`` (n, 9, 2), ``data/action`` (n, 2),
``meta/episode_ends``.

Samples (float32 tensors, env units; the policy normalises):
- ``PushTImageDataset``:  ``{"obs": {"image": (To, 3, 96, 96) in [0, 1], "agent_pos": (To, 2)}, "action": (16, 2)}``
- ``PushTLowdimDataset``: ``{"obs": {"keypoint": (To, 18), "agent_pos": (To, 2)}, "action": (16, 2)}``
  (keypoints flattened row-major as x0, y0, x1, y1, ...; concatenated in this order they are the reference's
  20-d low-dim observation). With ``load_full_obs=True`` observations span the whole horizon instead of To.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .dataset import SequenceDataset
from .normalizer import LinearNormalizer
from .replay_buffer import ArraySpec, ReplayBuffer

__all__ = [
    "PUSHT_IMAGE_SHAPE_META",
    "PUSHT_LOWDIM_SHAPE_META",
    "PushTImageDataset",
    "PushTLowdimDataset",
]

PUSHT_IMAGE_SHAPE_META: dict[str, Any] = {
    "obs": {
        "image": {"shape": [3, 96, 96], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}
PUSHT_LOWDIM_SHAPE_META: dict[str, Any] = {
    "obs": {
        "keypoint": {"shape": [18], "type": "low_dim"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}

_IMAGE = ArraySpec((None, None, 3), "uint8", "(n, H, W, 3) uint8 images")
_STATE = ArraySpec((5,), "float", "(n, 5) float state: agent x, y, block x, y, angle")
_ACTION = ArraySpec((2,), "float", "(n, 2) float actions (agent target x, y)")
_KEYPOINT = ArraySpec((None, 2), "float", "(n, K, 2) float block keypoints")


class _PushTDataset(SequenceDataset):
    """Shared constructor: ``OBS_KEY`` (images or keypoints) plus ``state`` and ``action`` from the store."""

    OBS_KEY: str = ""
    SPECS: dict[str, ArraySpec] = {}

    def __init__(
        self,
        zarr_path: str | os.PathLike,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        max_train_episodes: int | None = None,
        seed: int = 42,
        in_memory: bool = True,
        load_full_obs: bool = False,
    ) -> None:
        keys = [self.OBS_KEY, "state", "action"]
        buffer = ReplayBuffer.open(zarr_path, keys=keys, in_memory=in_memory, specs={k: self.SPECS[k] for k in keys})
        super().__init__(
            buffer, keys=keys, obs_keys=[self.OBS_KEY, "state"], horizon=horizon,
            n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, val_ratio=val_ratio,
            max_train_episodes=max_train_episodes, seed=seed, load_full_obs=load_full_obs,
        )
        self.shape_meta = self._shape_meta(buffer)

    def _shape_meta(self, buffer: ReplayBuffer) -> dict[str, Any]:
        raise NotImplementedError


class PushTImageDataset(_PushTDataset):
    """Image observations (one camera, ``image``) plus ``agent_pos``; the reference image PushT dataset."""

    OBS_KEY = "img"
    SPECS = {"img": _IMAGE, "state": _STATE, "action": _ACTION}

    def _shape_meta(self, buffer: ReplayBuffer) -> dict[str, Any]:
        height, width = buffer["img"].shape[1:3]
        meta = copy.deepcopy(PUSHT_IMAGE_SHAPE_META)
        meta["obs"]["image"]["shape"] = [3, int(height), int(width)]
        return meta

    def _to_sample(self, window: Mapping[str, np.ndarray]) -> dict[str, Any]:
        # numpy, not torch: no OpenMP threads for a few small arrays (much faster on a busy CPU)
        image = np.ascontiguousarray(np.moveaxis(window["img"], -1, 1), dtype=np.float32)
        image /= np.float32(255.0)
        return {
            "obs": {"image": torch.from_numpy(image), "agent_pos": torch.from_numpy(window["state"][:, :2].astype(np.float32))},
            "action": torch.from_numpy(window["action"].astype(np.float32)),
        }

    def get_normalizer(self, mode: str = "limits", fit_on: str = "train") -> LinearNormalizer:
        """``action`` and ``agent_pos`` fitted (``mode``) on the training episodes; ``image`` [0, 1] -> [-1, 1]."""
        mask = self._fit_mask(fit_on)
        normalizer = LinearNormalizer().fit(
            {
                "action": self.replay_buffer.gather("action", mask),
                "agent_pos": self.replay_buffer.gather("state", mask)[:, :2],
            },
            mode=mode,
        )
        normalizer.set_image_range("image")
        return normalizer


class PushTLowdimDataset(_PushTDataset):
    """Block keypoints (flattened, 18) and ``agent_pos`` (2): the reference's 20-d low-dim PushT observation."""

    OBS_KEY = "keypoint"
    SPECS = {"keypoint": _KEYPOINT, "state": _STATE, "action": _ACTION}

    def _shape_meta(self, buffer: ReplayBuffer) -> dict[str, Any]:
        meta = copy.deepcopy(PUSHT_LOWDIM_SHAPE_META)
        meta["obs"]["keypoint"]["shape"] = [2 * int(buffer["keypoint"].shape[1])]
        return meta

    def _to_sample(self, window: Mapping[str, np.ndarray]) -> dict[str, Any]:
        keypoint = window["keypoint"]
        return {
            "obs": {
                "keypoint": torch.from_numpy(keypoint.reshape(keypoint.shape[0], -1).astype(np.float32)),
                "agent_pos": torch.from_numpy(window["state"][:, :2].astype(np.float32)),
            },
            "action": torch.from_numpy(window["action"].astype(np.float32)),
        }

    def get_normalizer(self, mode: str = "limits", fit_on: str = "train") -> LinearNormalizer:
        """``keypoint``, ``agent_pos`` and ``action`` fitted (``mode``) on the training episodes."""
        mask = self._fit_mask(fit_on)
        keypoint = self.replay_buffer.gather("keypoint", mask)
        return LinearNormalizer().fit(
            {
                "action": self.replay_buffer.gather("action", mask),
                "keypoint": keypoint.reshape(keypoint.shape[0], -1),
                "agent_pos": self.replay_buffer.gather("state", mask)[:, :2],
            },
            mode=mode,
        )
