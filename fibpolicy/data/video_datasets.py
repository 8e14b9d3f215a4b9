"""Video classification data: the release's ``path label`` list files decoded with PyAV, clip sampling,
and the spatial transforms shared with the procedural moving-shapes videos.

Samples are ``{"video": (C, T, H, W) float tensor, "label": int}``; with ``num_clips > 1`` (test-time
multi-clip averaging) ``"video"`` is (clips, C, T, H, W) and the classifier averages over clips.

Clip sampling follows the SlowFast / TimeSformer loaders: a clip is ``num_frames`` frames
``sampling_rate`` apart; training takes one clip at a random start, testing ``num_clips`` clips with
evenly spaced starts (one clip: the centre). Frame indices past the end repeat the last frame.

A video that cannot be opened or decoded is reported with its path and skipped, not fatal: unreadable
files are dropped when the list is loaded (``skipped`` holds (path, reason)), and a decode failure
during training falls back to the next video in the list (``decode_failures`` counts them per process).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .mp4 import import_av

__all__ = [
    "VideoClipTransform",
    "VideoDecodeError",
    "VideoListDataset",
    "clip_starts",
    "clip_indices",
    "decode_frames",
    "probe_video",
    "read_video_list",
]


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; the message names the file."""


# --------------------------------------------------------------------------------------------- transform


class VideoClipTransform:
    """uint8 (T, H, W, 3) frames -> normalised float (3, T, H, W): short-side scale, crop, optional flip.

    Training: the short side is rescaled to a random size in ``jitter_scale`` (pixels), then a random
    ``crop_size`` crop (the same for every frame), mirrored with probability ``hflip``. Testing: the short
    side is rescaled to ``test_scale`` (default ``crop_size``) and the centre crop is taken.
    """

    def __init__(
        self,
        is_training: bool,
        crop_size: int,
        *,
        jitter_scale: Sequence[int] | None = None,
        test_scale: int | None = None,
        hflip: float = 0.0,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        jitter = tuple(int(s) for s in (jitter_scale if jitter_scale is not None else (crop_size, crop_size)))
        if len(jitter) != 2 or not crop_size <= jitter[0] <= jitter[1]:
            raise ValueError(f"jitter_scale must be [min, max] with crop_size ({crop_size}) <= min <= max, got {list(jitter)}")
        if test_scale is not None and test_scale < crop_size:
            raise ValueError(f"test_scale ({test_scale}) must be >= crop_size ({crop_size})")
        self.is_training, self.crop_size, self.jitter_scale = is_training, int(crop_size), jitter
        self.test_scale, self.hflip = int(test_scale or crop_size), float(hflip)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)

    def __call__(self, frames: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one clip; ``generator`` makes the random choices reproducible."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) frames, got {frames.shape}")
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
        h, w = clip.shape[-2:]
        if self.is_training:
            lo, hi = self.jitter_scale
            short = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        else:
            short = self.test_scale
        if min(h, w) != short:
            size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
            clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        h, w, c = clip.shape[-2], clip.shape[-1], self.crop_size
        if self.is_training:
            top = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - c + 1, (1,), generator=generator))
        else:
            top, left = (h - c) // 2, (w - c) // 2
        clip = clip[..., top : top + c, left : left + c]
        if self.is_training and self.hflip > 0 and float(torch.rand((), generator=generator)) < self.hflip:
            clip = clip.flip(-1)
        return (clip.permute(1, 0, 2, 3) - self.mean) / self.std  # (3, T, H, W)


# ------------------------------------------------------------------------------------------------ lists


def read_video_list(list_file: str | Path, root: str | Path | None = None) -> list[tuple[Path, int]]:
    """(path, label) pairs from a list file of ``path label`` lines (spaces, tabs or one comma between).

    Relative paths are resolved against ``root`` (default: the list file's directory). Blank lines and
    lines starting with ``#`` are ignored.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"video list {list_file} does not exist (expected `path label` lines)")
    base = Path(root) if root is not None else list_file.parent
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(",", 1) if "," in line and len(line.split()) == 1 else line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{list_file}:{number}: expected `path label`, got {line!r}")
        path, label = parts[0].strip(), parts[1].strip()
        try:
            value = int(label)
        except ValueError:
            raise ValueError(f"{list_file}:{number}: label must be an integer, got {label!r}") from None
        if value < 0:
            raise ValueError(f"{list_file}:{number}: label must be >= 0, got {value}")
        entries.append((base / path if not Path(path).is_absolute() else Path(path), value))
    if not entries:
        raise ValueError(f"video list {list_file} has no `path label` lines")
    return entries


# --------------------------------------------------------------------------------------------- decoding


def probe_video(path: str | Path) -> int:
    """Number of frames of the first video stream: from the container's header when it says, else
    estimated from duration x frame rate, else counted by decoding."""
    av = import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            count = stream.frames
            if not count and stream.average_rate:
                # Containers such as mkv / webm often leave the frame count out; the estimate only needs to be
                # close, since clip indices past the last decodable frame repeat that frame.
                seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / av.time_base
                count = int(round(seconds * float(stream.average_rate)))
            if not count:
                count = sum(1 for _ in container.decode(stream))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoDecodeError(f"{path}: {err}") from err
    if count <= 0:
        raise VideoDecodeError(f"{path}: no frames")
    return int(count)


def decode_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames at ``indices`` (decoding stops after the largest one).

    Indices past the last decodable frame repeat the last frame, so a container whose frame count is
    slightly off still yields a full clip.
    """
    av = import_av()
    wanted, top = set(int(i) for i in indices), max(int(i) for i in indices)
    frames: dict[int, np.ndarray] = {}
    last, last_index = None, -1
    try:
        with av.open(str(path)) as container:
            for last_index, frame in enumerate(container.decode(video=0)):
                if last_index in wanted:
                    frames[last_index] = frame.to_ndarray(format="rgb24")
                last = frame
                if last_index >= top:
                    break
            if last is None:
                raise VideoDecodeError(f"{path}: no decodable frames")
            pad = frames[last_index] if last_index in frames else last.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, ValueError, IndexError) as err:
        raise VideoDecodeError(f"{path}: {err}") from err
    return np.stack([frames.get(int(i), pad) for i in indices])


def clip_starts(num_video_frames: int, span: int, num_clips: int) -> list[int]:
    """Evenly spaced start frames of ``num_clips`` test clips (one clip: centred)."""
    room = max(num_video_frames - span, 0)
    if num_clips == 1:
        return [room // 2]
    return [round(room * k / (num_clips - 1)) for k in range(num_clips)]


def clip_indices(start: int, num_frames: int, sampling_rate: int, num_video_frames: int) -> list[int]:
    """Frame indices of one clip, clamped to the video (short videos repeat their last frame)."""
    return [min(start + k * sampling_rate, num_video_frames - 1) for k in range(num_frames)]


# ---------------------------------------------------------------------------------------------- dataset


def _read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes_file {path} does not exist (expected one class name per line)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"classes_file {path} is empty")
    return names


class VideoListDataset(Dataset):
    """Videos listed in a ``path label`` file, decoded with PyAV into clips of ``num_frames`` frames.

    ``train=True`` samples one random clip per video; ``train=False`` takes ``num_clips`` evenly spaced
    clips. Class names come from ``class_names``, a ``classes_file`` (one per line, line i = label i) or
    default to the label numbers. Unreadable videos are found when the dataset is built (each one is warned about with its path,
    collected in ``skipped`` and left out); ``probe=False`` skips that check (faster start on large lists).
    """

    def __init__(
        self,
        list_file: str | Path,
        *,
        root: str | Path | None = None,
        num_frames: int = 8,
        sampling_rate: int = 8,
        train: bool = True,
        num_clips: int = 1,
        transform: Callable[..., torch.Tensor] | None = None,
        class_names: Sequence[str] | None = None,
        classes_file: str | Path | None = None,
        num_classes: int | None = None,
        probe: bool = True,
        max_decode_retries: int = 10,
    ) -> None:
        if num_frames < 1 or sampling_rate < 1 or num_clips < 1:
            raise ValueError(f"num_frames, sampling_rate, num_clips must be >= 1, got {num_frames}, {sampling_rate}, {num_clips}")
        if train and num_clips != 1:
            raise ValueError(f"num_clips={num_clips} is a test-time option; training samples one clip per video")
        self.list_file = Path(list_file)
        if classes_file is not None:
            if class_names is not None:
                raise ValueError("give class_names or classes_file, not both")
            class_names = _read_class_names(classes_file)
        entries = read_video_list(list_file, root)
        self.skipped: list[tuple[str, str]] = []
        self.frame_counts: list[int | None] = []
        kept = []
        for path, label in entries:
            if probe:
                try:
                    count = probe_video(path)
                except VideoDecodeError as err:
                    self.skipped.append((str(path), str(err)))
                    warnings.warn(f"skipping unreadable video {err}", stacklevel=2)
                    continue
            else:
                count = None
            kept.append((path, label))
            self.frame_counts.append(count)
        if self.skipped:
            warnings.warn(f"{self.list_file}: skipped {len(self.skipped)} of {len(entries)} videos that could not be read", stacklevel=2)
        if not kept:
            raise ValueError(f"{self.list_file}: none of its {len(entries)} videos could be read")
        self.samples = kept
        self.targets = np.array([label for _, label in kept], dtype=np.int64)
        n_classes = num_classes or (len(class_names) if class_names is not None else int(max(label for _, label in entries)) + 1)
        if self.targets.max() >= n_classes:
            raise ValueError(f"{self.list_file}: label {int(self.targets.max())} >= num_classes {n_classes}")
        self.classes = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
        self.num_frames, self.sampling_rate, self.train, self.num_clips = num_frames, sampling_rate, train, num_clips
        self.transform = transform
        self.max_decode_retries = max_decode_retries
        self.decode_failures = 0

    def __len__(self) -> int:
        return len(self.samples)

    def _clips(self, index: int) -> list[np.ndarray]:
        path, _ = self.samples[index]
        count = self.frame_counts[index] or probe_video(path)
        span = (self.num_frames - 1) * self.sampling_rate + 1
        if self.train:
            starts = [int(torch.randint(0, max(count - span, 0) + 1, (1,)))]
        else:
            starts = clip_starts(count, span, self.num_clips)
        wanted = [clip_indices(s, self.num_frames, self.sampling_rate, count) for s in starts]
        frames = decode_frames(path, [i for clip in wanted for i in clip])
        return [frames[k * self.num_frames : (k + 1) * self.num_frames] for k in range(len(starts))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(self.max_decode_retries + 1):
            candidate = (index + attempt) % len(self.samples)
            try:
                clips = self._clips(candidate)
                break
            except VideoDecodeError as err:
                self.decode_failures += 1
                warnings.warn(f"skipping video that failed to decode ({self.decode_failures} so far): {err}", stacklevel=2)
        else:
            raise VideoDecodeError(f"{self.max_decode_retries + 1} consecutive videos from index {index} of {self.list_file} failed to decode")
        # Test-time transforms are deterministic; training draws from torch's global RNG, which the trainer
        # seeds and DataLoader workers derive their own seeds from.
        out = [self.transform(c) if self.transform is not None else torch.from_numpy(c) for c in clips]
        video = out[0] if self.num_clips == 1 else torch.stack(out)
        return {"video": video, "label": int(self.samples[candidate][1])}
