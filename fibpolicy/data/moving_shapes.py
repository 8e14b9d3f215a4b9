"""Moving shapes: a procedural video classification task that no single frame can solve.

Each video shows one shape (circle, square, triangle, diamond or cross; random size and colour) on a
noisy background of a random colour, moving with constant velocity on a torus (it wraps around the
frame edges). The class is the motion: one of ``directions`` headings (evenly spaced, 0 = rightwards,
then clockwise in image coordinates) times one of ``speeds`` (pixels per frame). Shape, colour, size and
start position are drawn independently of the class and the start position is uniform, so every single
frame has the same distribution whatever the class: only the motion across frames tells it.

Videos are a pure function of (``seed``, split, index): the train and test splits use disjoint random
streams, and ``write_moving_shapes`` writes the same videos as mp4 files plus a ``path label`` list, so the
real video loader (:class:`~fibpolicy.data.video_datasets.VideoListDataset`) can be exercised offline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["MovingShapesDataset", "SHAPES", "moving_shapes_classes", "render_moving_shape", "write_moving_shapes"]

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
_SPLIT_STREAM = {"train": 0, "test": 1}
_HEADINGS = {4: ("right", "down", "left", "up"), 8: ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")}


def moving_shapes_classes(directions: int, speeds: Sequence[float]) -> list[str]:
    """Class names, index = direction_index * len(speeds) + speed_index."""
    names = _HEADINGS.get(directions, tuple(f"{round(360 * k / directions)}deg" for k in range(directions)))
    return [f"{name}@{speed:g}px" for name in names for speed in speeds]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.85
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.2
    if shape == "triangle":  # apex up, base at dy = r
        return (dy <= r * 0.8) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        thick = max(r * 0.35, 0.75)
        return ((np.abs(dx) <= thick) | (np.abs(dy) <= thick)) & (np.maximum(np.abs(dx), np.abs(dy)) <= r)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render_moving_shape(
    rng: np.random.Generator,
    *,
    velocity: tuple[float, float],
    num_frames: int,
    image_size: int,
    shapes: Sequence[str] = SHAPES,
    noise: float = 0.06,
) -> np.ndarray:
    """uint8 (num_frames, image_size, image_size, 3) frames of one random shape moving at ``velocity`` (px/frame)."""
    s = image_size
    shape = shapes[int(rng.integers(len(shapes)))]
    radius = rng.uniform(0.10, 0.17) * s
    background = rng.uniform(0.0, 0.35, size=3)
    colour = rng.uniform(0.55, 1.0, size=3)
    start = rng.uniform(0.0, s, size=2)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    frames = np.empty((num_frames, s, s, 3), dtype=np.float32)
    for t in range(num_frames):
        cx, cy = (start + t * np.asarray(velocity)) % s
        # Offsets on the torus, so a shape crossing an edge re-enters on the other side.
        dx = (xs - cx + s / 2) % s - s / 2
        dy = (ys - cy + s / 2) % s - s / 2
        inside = _shape_mask(shape, dx, dy, radius)
        frames[t] = np.where(inside[..., None], colour, background)
    frames += rng.normal(0.0, noise, size=frames.shape).astype(np.float32)
    return (frames.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


class MovingShapesDataset(Dataset):
    """``num_videos`` procedural clips, balanced over ``directions x speeds`` classes; see the module docstring.

    Items are ``{"video": transform(uint8 (T, H, W, 3)), "label": int}``; without a transform the raw
    uint8 frames are returned as a tensor. ``video_frames`` frames are rendered per video and
    ``num_frames`` of them, ``sampling_rate`` apart, form the clip (from a random start in training,
    the centred one otherwise), as the file-based loader samples them.

    ``cache=True`` renders every video once, here, and keeps the uint8 frames (``num_videos x
    video_frames x image_size^2 x 3`` bytes; 98 MB for 4000 8-frame 32-px videos): rendering is about
    half of a clip's loading cost, and being done before any worker forks, the frames are shared by
    the loader's workers instead of being re-rendered every epoch.
    """

    def __init__(
        self,
        num_videos: int = 1000,
        *,
        split: str = "train",
        num_frames: int = 8,
        sampling_rate: int = 1,
        video_frames: int | None = None,
        image_size: int = 32,
        directions: int = 4,
        speeds: Sequence[float] = (1.0, 2.0),
        shapes: Sequence[str] = SHAPES,
        noise: float = 0.06,
        seed: int = 0,
        train: bool | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
        cache: bool = False,
    ) -> None:
        if split not in _SPLIT_STREAM:
            raise ValueError(f"moving shapes split must be one of {sorted(_SPLIT_STREAM)}, got {split!r}")
        if num_videos < 1 or num_frames < 1 or sampling_rate < 1 or directions < 1 or not speeds:
            raise ValueError("num_videos, num_frames, sampling_rate, directions must be >= 1 and speeds non-empty")
        unknown = [s for s in shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; expected a subset of {SHAPES}")
        span = (num_frames - 1) * sampling_rate + 1
        self.video_frames = int(video_frames) if video_frames is not None else span
        if self.video_frames < 1:
            raise ValueError(f"video_frames must be >= 1, got {video_frames}")
        self.num_videos, self.split, self.num_frames, self.sampling_rate = int(num_videos), split, num_frames, sampling_rate
        self.image_size, self.directions, self.speeds = int(image_size), int(directions), [float(v) for v in speeds]
        self.shapes, self.noise, self.seed = tuple(shapes), float(noise), int(seed)
        self.train = split == "train" if train is None else bool(train)
        self.transform = transform
        self.classes = moving_shapes_classes(self.directions, self.speeds)
        # Labels cycle through the classes so every split is balanced; the content is random per video.
        self.targets = np.arange(self.num_videos, dtype=np.int64) % len(self.classes)
        self._frames: np.ndarray | None = None
        if cache:
            self._frames = np.stack([self._render(index) for index in range(self.num_videos)])

    def __len__(self) -> int:
        return self.num_videos

    def velocity(self, label: int) -> tuple[float, float]:
        """(vx, vy) in pixels per frame for a class index."""
        direction, speed_index = divmod(int(label), len(self.speeds))
        angle = 2.0 * math.pi * direction / self.directions
        speed = self.speeds[speed_index]
        return speed * math.cos(angle), speed * math.sin(angle)

    def video(self, index: int) -> np.ndarray:
        """All ``video_frames`` uint8 frames of video ``index`` (deterministic)."""
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        if self._frames is not None:
            return self._frames[index]
        return self._render(index)

    def _render(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])
        return render_moving_shape(
            rng, velocity=self.velocity(self.targets[index]), num_frames=self.video_frames,
            image_size=self.image_size, shapes=self.shapes, noise=self.noise,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames = self.video(index)
        span = (self.num_frames - 1) * self.sampling_rate + 1
        room = max(self.video_frames - span, 0)
        start = int(torch.randint(0, room + 1, (1,))) if self.train else room // 2
        idx = [min(start + k * self.sampling_rate, self.video_frames - 1) for k in range(self.num_frames)]
        clip = frames[idx]
        return {"video": self.transform(clip) if self.transform is not None else torch.from_numpy(clip), "label": int(self.targets[index])}


def write_moving_shapes(
    out_dir: str | Path,
    num_videos: int,
    *,
    split: str = "train",
    fps: int = 10,
    **dataset_kwargs: Any,
) -> Path:
    """Write ``num_videos`` moving-shapes videos as ``out_dir/<split>/<index>.mp4`` and ``out_dir/<split>.txt``.

    The list file has one ``<split>/<index>.mp4 <label>`` line per video (paths relative to ``out_dir``),
    the release's format; ``dataset_kwargs`` go to :class:`MovingShapesDataset`. Returns the list path.
    """
    from ..atomic import write_text
    from .mp4 import write_mp4

    data = MovingShapesDataset(num_videos, split=split, **dataset_kwargs)
    out_dir = Path(out_dir)
    lines = []
    for index in range(num_videos):
        relative = Path(split) / f"{index:06d}.mp4"
        write_mp4(list(data.video(index)), out_dir / relative, fps=fps)
        lines.append(f"{relative.as_posix()} {int(data.targets[index])}")
    list_path = out_dir / f"{split}.txt"
    write_text(list_path, "\n".join(lines) + "\n")
    write_text(out_dir / "classes.txt", "\n".join(data.classes) + "\n")
    return list_path
