"""Data: zarr replay buffer (one reader, one writer), demonstration recording (zarr, or robomimic's HDF5
layout), the robomimic HDF5 -> zarr cache, sequence sampler, the generic sequence dataset driven by a
task's shape_meta; image and video classification datasets."""

from .dataset import SequenceDataset
from .image_datasets import CIFARDataset, DigitsDataset, ImageFolderDataset, load_digits, read_cifar, stratified_split
from .moving_shapes import MovingShapesDataset, moving_shapes_classes, render_moving_shape, write_moving_shapes
from .mp4 import read_mp4, write_mp4
from .recording import ensure_demos, record_demos
from .robomimic import convert_robomimic, ensure_robomimic_cache, initial_states
from .robomimic_demos import RobomimicHDF5Writer, record_robomimic_demos, write_abs_copy
from .replay_buffer import ArraySpec, ReplayBuffer, ReplayBufferError, ReplayBufferWriter, write_replay_buffer
from .sampler import SequenceSampler, create_indices, downsample_mask, get_val_mask, split_episodes
from .video_datasets import VideoClipTransform, VideoDecodeError, VideoListDataset, decode_frames, probe_video, read_video_list

__all__ = [
    "ArraySpec",
    "CIFARDataset",
    "DigitsDataset",
    "ImageFolderDataset",
    "MovingShapesDataset",
    "ReplayBuffer",
    "ReplayBufferError",
    "ReplayBufferWriter",
    "RobomimicHDF5Writer",
    "SequenceDataset",
    "SequenceSampler",
    "VideoClipTransform",
    "VideoDecodeError",
    "VideoListDataset",
    "convert_robomimic",
    "create_indices",
    "decode_frames",
    "ensure_demos",
    "ensure_robomimic_cache",
    "initial_states",
    "downsample_mask",
    "get_val_mask",
    "load_digits",
    "moving_shapes_classes",
    "probe_video",
    "read_mp4",
    "record_demos",
    "record_robomimic_demos",
    "read_cifar",
    "read_video_list",
    "render_moving_shape",
    "split_episodes",
    "stratified_split",
    "write_moving_shapes",
    "write_abs_copy",
    "write_mp4",
    "write_replay_buffer",
]
