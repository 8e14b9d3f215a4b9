"""Data: zarr replay buffer, sequence sampler, normaliser, PushT datasets; image and video classification datasets."""

from .dataset import SequenceDataset
from .image_datasets import CIFARDataset, DigitsDataset, ImageFolderDataset, load_digits, read_cifar, stratified_split
from .moving_shapes import MovingShapesDataset, moving_shapes_classes, render_moving_shape, write_moving_shapes
from .normalizer import NORMALIZER_MODES, LinearNormalizer, SingleFieldNormalizer
from .pusht_dataset import PUSHT_IMAGE_SHAPE_META, PUSHT_LOWDIM_SHAPE_META, PushTImageDataset, PushTLowdimDataset
from .replay_buffer import ArraySpec, ReplayBuffer, ReplayBufferError, ReplayBufferWriter, write_replay_buffer
from .sampler import SequenceSampler, create_indices, downsample_mask, get_val_mask, split_episodes
from .video_datasets import VideoClipTransform, VideoDecodeError, VideoListDataset, decode_frames, probe_video, read_video_list

__all__ = [
    "ArraySpec",
    "CIFARDataset",
    "DigitsDataset",
    "ImageFolderDataset",
    "LinearNormalizer",
    "MovingShapesDataset",
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
    "VideoClipTransform",
    "VideoDecodeError",
    "VideoListDataset",
    "create_indices",
    "decode_frames",
    "downsample_mask",
    "get_val_mask",
    "load_digits",
    "moving_shapes_classes",
    "probe_video",
    "read_cifar",
    "read_video_list",
    "render_moving_shape",
    "split_episodes",
    "stratified_split",
    "write_moving_shapes",
    "write_replay_buffer",
]
