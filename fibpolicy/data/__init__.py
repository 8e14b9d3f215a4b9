"""Demonstration data: zarr replay buffer, edge-padded sequence sampler, normaliser, PushT datasets."""

from .dataset import SequenceDataset
from .normalizer import NORMALIZER_MODES, LinearNormalizer, SingleFieldNormalizer
from .pusht_dataset import PUSHT_IMAGE_SHAPE_META, PUSHT_LOWDIM_SHAPE_META, PushTImageDataset, PushTLowdimDataset
from .replay_buffer import ArraySpec, ReplayBuffer, ReplayBufferError, ReplayBufferWriter, write_replay_buffer
from .sampler import SequenceSampler, create_indices, downsample_mask, get_val_mask, split_episodes

__all__ = [
    "ArraySpec",
    "LinearNormalizer",
    "NORMALIZER_MODES",
    "PUSHT_IMAGE_SHAPE_META",
    "PUSHT_LOWDIM_SHAPE_META",
    "PushTImageDataset",
    "PushTLowdimDataset",
    "ReplayBuffer",
    "ReplayBufferError",
    "ReplayBufferWriter",
    "SequenceDataset",
    "SequenceSampler",
    "SingleFieldNormalizer",
    "create_indices",
    "downsample_mask",
    "get_val_mask",
    "split_episodes",
    "write_replay_buffer",
]
