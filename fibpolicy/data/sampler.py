"""Fixed-length windows over the episodes of a replay buffer, padded at episode edges by repeating edge frames.

Index arithmetic, the train/val split and the episode downsampling reproduce the reference implementation
(same numpy generator calls), so with the same seed the same episodes are held out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .replay_buffer import ReplayBuffer

__all__ = ["SequenceSampler", "create_indices", "downsample_mask", "get_val_mask", "split_episodes"]


def create_indices(
    episode_ends: np.ndarray,
    horizon: int,
    episode_mask: np.ndarray | None = None,
    pad_before: int = 0,
    pad_after: int = 0,
) -> np.ndarray:
    """(n_windows, 4) int64 rows ``[buffer_start, buffer_end, sample_start, sample_end]``.

    For every selected episode of length L, window starts run from ``-pad_before`` to ``L - horizon + pad_after``
    (inclusive); rows ``buffer_start:buffer_end`` fill window positions ``sample_start:sample_end`` and the rest
    repeat the edge frames. Pads are clipped to ``[0, horizon - 1]`` as in the reference.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    if episode_mask is None:
        episode_mask = np.ones(len(episode_ends), dtype=bool)
    episode_mask = np.asarray(episode_mask, dtype=bool)
    if episode_mask.shape != episode_ends.shape:
        raise ValueError(f"episode_mask has shape {episode_mask.shape}, expected {episode_ends.shape}")
    pad_before = min(max(pad_before, 0), horizon - 1)
    pad_after = min(max(pad_after, 0), horizon - 1)
    rows = []
    for i in np.nonzero(episode_mask)[0]:
        start = 0 if i == 0 else int(episode_ends[i - 1])
        length = int(episode_ends[i]) - start
        idx = np.arange(-pad_before, length - horizon + pad_after + 1)
        if len(idx) == 0:
            continue
        buffer_start = np.maximum(idx, 0) + start
        buffer_end = np.minimum(idx + horizon, length) + start
        sample_start = buffer_start - (idx + start)
        sample_end = horizon - ((idx + horizon + start) - buffer_end)
        rows.append(np.stack([buffer_start, buffer_end, sample_start, sample_end], axis=1))
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out episodes: ``round(n * val_ratio)`` of them, at least 1 and leaving 1 for training."""
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return val_mask
    if n_episodes < 2:
        raise ValueError(f"val_ratio={val_ratio} needs at least 2 episodes (one for training), got {n_episodes}")
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep at most ``max_n`` of the selected episodes, chosen with a seeded generator."""
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or mask.sum() <= max_n:
        return mask.copy()
    if max_n < 1:
        raise ValueError(f"max_train_episodes must be >= 1 or None, got {max_n}")
    current = np.nonzero(mask)[0]
    rng = np.random.default_rng(seed=seed)
    keep = current[rng.choice(len(current), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def split_episodes(
    n_episodes: int, val_ratio: float = 0.02, max_train_episodes: int | None = None, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """(train_mask, val_mask): hold out ``val_ratio`` of the episodes, then keep at most ``max_train_episodes``."""
    val_mask = get_val_mask(n_episodes, val_ratio, seed=seed)
    train_mask = downsample_mask(~val_mask, max_train_episodes, seed=seed)
    return train_mask, val_mask


class SequenceSampler:
    """Windows of ``horizon`` steps over the episodes in ``episode_mask``, edge-padded.

    ``key_first_k`` maps a key to k: only the first k window positions of that key are read and returned
    (shape (k, ...) instead of (horizon, ...)) — used for observations, of which the policy needs only
    the first ``n_obs_steps``. (The reference returns a full-length array whose tail is undefined instead.)
    """

    def __init__(
        self,
        replay_buffer: ReplayBuffer,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        keys: Iterable[str] | None = None,
        key_first_k: Mapping[str, int] | None = None,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        self.replay_buffer = replay_buffer
        self.horizon = int(horizon)
        self.keys = list(keys) if keys is not None else list(replay_buffer.keys())
        for key in self.keys:
            if key not in replay_buffer:
                raise KeyError(f"{replay_buffer.source}: sampler key {key!r} not in the replay buffer {replay_buffer.keys()}")
        self.key_first_k = {k: min(int(v), self.horizon) for k, v in (key_first_k or {}).items()}
        for key, k in self.key_first_k.items():
            if k < 1:
                raise ValueError(f"key_first_k[{key!r}] must be >= 1, got {k}")
        if episode_mask is None:
            episode_mask = np.ones(replay_buffer.n_episodes, dtype=bool)
        self.episode_mask = np.asarray(episode_mask, dtype=bool)
        self.indices = create_indices(
            replay_buffer.episode_ends, self.horizon, self.episode_mask, pad_before=pad_before, pad_after=pad_after
        )

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, index: int) -> dict[str, np.ndarray]:
        """Window ``index`` as a dict of new numpy arrays: (horizon, ...) or (k, ...) for ``key_first_k`` keys."""
        buffer_start, buffer_end, sample_start, _ = (int(v) for v in self.indices[index])
        n_rows = buffer_end - buffer_start
        result = {}
        for key in self.keys:
            length = self.key_first_k.get(key, self.horizon)
            # window position p reads episode row clip(p - sample_start, 0, n_rows - 1)
            local = np.clip(np.arange(length) - sample_start, 0, n_rows - 1)
            chunk = np.asarray(self.replay_buffer[key][buffer_start : buffer_start + int(local[-1]) + 1])
            result[key] = chunk[local]
        return result
